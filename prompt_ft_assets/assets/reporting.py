"""The report asset: one self-contained HTML page per experiment under data/reports."""


import os
import re
import uuid
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from ..paths import default_experiment, figures_dir, reports_dir, state_dir
from ..prompt_runner import CACHE_TABLE
from ..report_content import StatisticsSettings
from ..report_page import ReportInputs, render_report, summary_markdown
from ..resources import ExperimentResource, ResultsStoreResource
from ..store import ResultsStore
from ..summaries import QUESTIONS, baseline_rows
from .analysis import FIGURES, read_summary_table, summary_tables
from .finetuned import FINETUNE_METRICS_TABLE, FINETUNE_PREDICTIONS_TABLE
from .prompted import PREDICTIONS_TABLE, RUN_METRICS_TABLE

# Only these prediction columns are read: the prompt and raw output texts would make the read
# slow and the report does not show them.
PROMPT_PREDICTION_COLUMNS = (
    "dataset", "method", "model", "template", "run", "idx", "label", "prediction", "invalid_reason", "latency_s",
)
OPTIONAL_PROMPT_COLUMNS = ("backend", "cache_key", "shots", "temperature_is_default", "answer_format")
FINETUNE_PREDICTION_COLUMNS = ("dataset", "encoder", "seed", "idx", "label", "prediction")
# Finetune rows carry train_size since runs can train on subsets; older rows lack the column.
OPTIONAL_FINETUNE_COLUMNS = ("train_size",)
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


class ReportConfig(Config):
    bootstrap_seed: int = Field(default=0, description="Seed of every bootstrap in the report.")
    mean_resamples: int = Field(default=10_000, gt=0, description="Resamples of each interval of a mean F1.")
    paired_resamples: int = Field(default=2_000, gt=0, description="Resamples of each paired F1 difference.")


def report_path(experiment_name: str) -> Path:
    """data/reports/<experiment name>.html, with characters unsafe in a file name replaced by '_'."""
    return reports_dir() / f"{_UNSAFE_FILE_CHARS.sub('_', experiment_name)}.html"


def _read_columns(
    store: ResultsStore, table: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()
) -> pd.DataFrame:
    if not store.files(table):
        return pd.DataFrame(columns=list(columns))
    with store.connect() as connection:
        present = {row[0] for row in connection.execute(f"DESCRIBE {table}").fetchall()}
        selected = [*columns, *(column for column in optional if column in present)]
        return connection.execute(f"SELECT {', '.join(selected)} FROM {table}").df()


def _read_prompt_predictions(store: ResultsStore) -> pd.DataFrame:
    """Prompted predictions with finished_at, the time each output's generation ended, taken from
    prediction_cache's created_at when the cache is stored beside them."""
    frame = _read_columns(store, PREDICTIONS_TABLE, PROMPT_PREDICTION_COLUMNS, OPTIONAL_PROMPT_COLUMNS)
    if frame.empty or "cache_key" not in frame or not store.files(CACHE_TABLE):
        return frame
    finished = store.query(f"SELECT cache_key, max(created_at) AS finished_at FROM {CACHE_TABLE} GROUP BY cache_key")
    return frame.merge(finished, on="cache_key", how="left")


def _class_counts(spec, *frames: pd.DataFrame) -> dict[str, int]:
    """Classes per dataset from the spec; a dataset stored by another spec gets its largest label + 1."""
    counts = {dataset.id: len(dataset.label_names) for dataset in spec.datasets}
    for frame in frames:
        if frame.empty:
            continue
        for dataset, labels in frame.groupby("dataset")["label"]:
            counts.setdefault(dataset, max(2, int(labels.max()) + 1))
    return counts


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@asset(
    deps=[summary_tables, *(AssetKey(f"figure_{name}") for name in FIGURES)],
    group_name="analysis",
    kinds={"html"},
)
def report(
    context: AssetExecutionContext, config: ReportConfig, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """Write one HTML page per experiment to data/reports/<name>.html, readable offline.

    The page contains each research question with its summary table and figure, prompted versus
    finetuned with bootstrap intervals and paired tests, invalid-output rates, cost per 1,000
    classifications, flagged runs, an OLS fit of prompted F1 and the run's settings.
    """
    spec_path = Path(experiment.spec_path or default_experiment())
    spec = experiment.load()
    store = results.store()
    # The report's prompted sections compare zero-shot runs at the default temperature and answer format.
    # Other runs appear in the learning-curve, temperature and answer-format tables.
    prompt_predictions = baseline_rows(_read_prompt_predictions(store))
    finetune_predictions = _read_columns(
        store, FINETUNE_PREDICTIONS_TABLE, FINETUNE_PREDICTION_COLUMNS, OPTIONAL_FINETUNE_COLUMNS
    )
    figures = {}
    for name, table_name in FIGURES.items():
        png = figures_dir() / f"{name}.png"
        figures[name] = (table_name, png.read_bytes() if png.is_file() else None)

    inputs = ReportInputs(
        experiment=spec.name,
        description=spec.description,
        spec_text=spec_path.read_text(encoding="utf-8"),
        state_dir=str(state_dir()),
        generated_at=pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC"),
        run_metrics=baseline_rows(store.read_table(RUN_METRICS_TABLE)),
        finetune_metrics=store.read_table(FINETUNE_METRICS_TABLE),
        prompt_predictions=prompt_predictions,
        finetune_predictions=finetune_predictions,
        questions=dict(QUESTIONS),
        summary_tables={name: read_summary_table(store, name) for name in QUESTIONS},
        figures=figures,
        n_classes=_class_counts(spec, prompt_predictions, finetune_predictions),
        statistics=StatisticsSettings(
            seed=config.bootstrap_seed, mean_resamples=config.mean_resamples, paired_resamples=config.paired_resamples
        ),
    )

    rendered = render_report(inputs)
    path = report_path(spec.name)
    _write_atomically(path, rendered.html)
    context.log.info("wrote the report of %s to %s (%d bytes)", spec.name, path, len(rendered.html))
    return MaterializeResult(
        metadata={
            "path": MetadataValue.path(str(path)),
            "summary": MetadataValue.md(summary_markdown(rendered, str(path))),
            "flagged_runs": len(rendered.flagged),
            "paired_tests": len(rendered.paired),
            "bytes": len(rendered.html.encode("utf-8")),
        }
    )
