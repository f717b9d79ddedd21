"""Prepare DAGSTER_HOME under the state folder, with the project's dagster.yaml in it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .paths import dagster_home, project_root


def prepare_dagster_home() -> Path:
    """Create data/dagster_home, copy dagster.yaml into it unless one is there, and set DAGSTER_HOME."""
    configured = os.environ.get("DAGSTER_HOME")
    home = Path(configured) if configured else dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(project_root() / "dagster.yaml", target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
