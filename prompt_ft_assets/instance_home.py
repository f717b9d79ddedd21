"""Prepare DAGSTER_HOME under the state folder, with the project's dagster.yaml in it.

The default instance keeps runs and event logs in SQLite files inside DAGSTER_HOME, which only
processes on one machine can share. Set PROMPT_FT_DAGSTER_YAML to another instance file, such as
deploy/dagster.postgres.yaml, to put the instance on a database that several machines reach.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

from .paths import dagster_home, project_root

logger = logging.getLogger(__name__)

INSTANCE_YAML_VARIABLE = "PROMPT_FT_DAGSTER_YAML"


class InstanceConfigError(RuntimeError):
    """The instance file named by PROMPT_FT_DAGSTER_YAML is missing or unreadable."""


def instance_yaml_source() -> Path:
    """Return the dagster.yaml to install: PROMPT_FT_DAGSTER_YAML when set, else the project's default file.

    A relative PROMPT_FT_DAGSTER_YAML is looked up in the current folder first, then in the project.
    """
    configured = os.environ.get(INSTANCE_YAML_VARIABLE, "").strip()
    if not configured:
        return project_root() / "dagster.yaml"
    path = Path(configured).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, project_root() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise InstanceConfigError(
        f"{INSTANCE_YAML_VARIABLE}={configured!r} is not a file (looked at {tried}); point it at an instance file "
        "such as deploy/dagster.postgres.yaml, or unset it to use the default SQLite instance"
    )


def _warn_if_telemetry_on(source: Path) -> None:
    try:
        settings = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InstanceConfigError(
            f"instance file {source} is not readable YAML: {error}; fix it or unset {INSTANCE_YAML_VARIABLE}"
        ) from error
    telemetry = settings.get("telemetry") if isinstance(settings, dict) else None
    if not (isinstance(telemetry, dict) and telemetry.get("enabled") is False):
        logger.warning("instance file %s does not set telemetry.enabled: false, so Dagster may send telemetry", source)


def prepare_dagster_home() -> Path:
    """Create DAGSTER_HOME (data/dagster_home unless set), install the instance file and set DAGSTER_HOME.

    Without PROMPT_FT_DAGSTER_YAML the project's dagster.yaml is copied only when the folder has
    none, so local edits stay. With it, the named file replaces a dagster.yaml whose content
    differs, so switching the variable switches the instance.
    """
    configured = os.environ.get("DAGSTER_HOME")
    home = Path(configured) if configured else dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    source = instance_yaml_source()
    if os.environ.get(INSTANCE_YAML_VARIABLE, "").strip():
        _warn_if_telemetry_on(source)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            if target.exists():
                logger.info("replacing %s with %s (%s)", target, source, INSTANCE_YAML_VARIABLE)
            shutil.copyfile(source, target)
    elif not target.exists():
        shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
