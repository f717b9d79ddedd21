"""Dagster resources: the experiment spec and the results store.

Unset fields are read from the environment when used, not when the definitions load, so that a
process can point the same definitions at another spec or state folder (the CLI and tests do).
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from .paths import default_experiment, results_root, views_database
from .hub_policy import apply_hub_policy
from .spec import ExperimentSpec, load_spec
from .store import ResultsStore

# A folder or an fsspec URL (file://, s3://bucket/prefix) that every worker reaches.
RESULTS_ROOT_VARIABLE = "PROMPT_FT_RESULTS_ROOT"


class ExperimentResource(ConfigurableResource):
    """The experiment spec every asset reads."""

    spec_path: str | None = Field(
        default=None, description="Path of the spec YAML; PROMPT_FT_EXPERIMENT or experiments/quickstart.yaml when unset."
    )

    def load(self) -> ExperimentSpec:
        """Load the spec and apply its hub policy in this process (hub_policy.py), so a run started
        from the UI is offline when the spec names no hub source, as `prompt-ft run` is."""
        spec = load_spec(self.spec_path or default_experiment())
        apply_hub_policy(spec)
        return spec


class ResultsStoreResource(ConfigurableResource):
    """The Parquet results store and the DuckDB views database over it."""

    root: str | None = Field(
        default=None,
        description="Folder or fsspec URL (file://..., s3://bucket/prefix) with one subfolder per table; "
        "PROMPT_FT_RESULTS_ROOT, else <state>/results, when unset.",
    )
    views_database_path: str | None = Field(
        default=None, description="DuckDB file with a view per table, for readers; <state>/results.duckdb when unset."
    )

    def store(self) -> ResultsStore:
        return ResultsStore(self.root or os.environ.get(RESULTS_ROOT_VARIABLE, "").strip() or results_root())

    @property
    def views_database(self) -> Path:
        return Path(self.views_database_path) if self.views_database_path else views_database()
