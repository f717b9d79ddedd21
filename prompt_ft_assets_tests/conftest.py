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


@pytest.fixture(scope="session")
def cola_dir():
    if not (COLA_DIR / "validation.tsv").is_file():
        pytest.fail(f"real CoLA data not found at {COLA_DIR}; set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    return COLA_DIR


class RobustnessTally:
    """Counts of bad inputs tried, faults injected and stored rows lost, summed over the session."""

    def __init__(self) -> None:
        self.bad_inputs = 0
        self.faults = 0
        self.rows_lost = 0
        self.rows_checked = 0

    def bad_input(self, count: int = 1) -> None:
        self.bad_inputs += count

    def fault(self, count: int = 1) -> None:
        self.faults += count

    def rows(self, expected: int, stored: int) -> int:
        """Record a check of stored rows against the rows expected; returns the rows lost (0 or more)."""
        lost = max(0, expected - stored)
        self.rows_checked += expected
        self.rows_lost += lost
        return lost

    @property
    def used(self) -> bool:
        return self.bad_inputs + self.faults + self.rows_checked > 0


_ROBUSTNESS = RobustnessTally()


@pytest.fixture
def robustness_tally() -> RobustnessTally:
    """The session's tally; robustness tests count what they tried and the rows they found missing."""
    return _ROBUSTNESS


def pytest_terminal_summary(terminalreporter):
    if _ROBUSTNESS.used:
        terminalreporter.write_line(
            f"robustness: {_ROBUSTNESS.bad_inputs} bad inputs tried, {_ROBUSTNESS.faults} faults injected, "
            f"{_ROBUSTNESS.rows_lost} rows lost (of {_ROBUSTNESS.rows_checked} stored rows checked)"
        )
