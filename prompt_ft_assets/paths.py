"""Where generated state lives: results, checkpoints, models, tables, figures and Dagster's home.

Everything goes under one state folder, `data/` in the project by default. Set PROMPT_FT_STATE_DIR
to put it elsewhere (tests point it at a temporary folder).
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_VARIABLE = "PROMPT_FT_STATE_DIR"
EXPERIMENT_VARIABLE = "PROMPT_FT_EXPERIMENT"


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    configured = os.environ.get(STATE_DIR_VARIABLE)
    return Path(configured).resolve() if configured else project_root() / "data"


def results_root() -> Path:
    return state_dir() / "results"


# NOTE: checkpoints and model files stay on the local disk of the worker that writes them, even
# when PROMPT_FT_RESULTS_ROOT puts the results store on an object store. No asset reads a checkpoint
# back, so a row's checkpoint_path names a folder on the worker that trained it; GGUF and encoder
# files are loaded by path on each worker.
def checkpoints_dir() -> Path:
    return state_dir() / "checkpoints"


def models_dir() -> Path:
    return state_dir() / "models"


def tables_dir() -> Path:
    return state_dir() / "tables"


def figures_dir() -> Path:
    return state_dir() / "figures"


def reports_dir() -> Path:
    return state_dir() / "reports"


def views_database() -> Path:
    """The DuckDB file with one view per results table, for notebooks and other readers."""
    return state_dir() / "results.duckdb"


def dagster_home() -> Path:
    return state_dir() / "dagster_home"


def default_experiment() -> Path:
    configured = os.environ.get(EXPERIMENT_VARIABLE)
    return Path(configured).resolve() if configured else project_root() / "experiments" / "quickstart.yaml"
