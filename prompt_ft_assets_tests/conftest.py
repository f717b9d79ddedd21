"""Shared fixtures: the real CoLA folder and a state folder per test."""

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = Path(os.environ.get("PROMPT_FT_DATASETS_DIR", PROJECT_ROOT.parent / "shared" / "data")).resolve()
COLA_DIR = DATASETS_DIR / "glue_cola"


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A fresh state folder (results, checkpoints, Dagster home) for one test."""
    folder = tmp_path / "state"
    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(folder))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return folder


@pytest.fixture
def cola_dir():
    if not (COLA_DIR / "validation.tsv").is_file():
        pytest.fail(f"real CoLA data not found at {COLA_DIR}; set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    return COLA_DIR
