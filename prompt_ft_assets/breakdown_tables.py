"""Summary tables of calibration, the domain breakdown and dataset statistics against results.

Like summaries.py, these only aggregate stored metric rows (calibration_metrics, domain_metrics,
dataset_statistics, prompt_run_metrics, finetune_metrics); no metric is recomputed here.
"""

from __future__ import annotations

import pandas as pd

from .dataset_statistics import statistics_vs_results
from .summaries import full_train_runs, summarize

CALIBRATION_COLUMNS = ["dataset", "model", "template", "shots", "calibration"]
DOMAIN_COLUMNS = ["dataset", "method", "calibration", "model", "shots", "domain"]


def _with_columns(frame: pd.DataFrame, defaults: dict[str, object]) -> pd.DataFrame:
    """frame with each missing column added at its default, for rows stored before the column existed."""
    return frame.assign(**{column: value for column, value in defaults.items() if column not in frame})


def calibration_table(calibration_metrics: pd.DataFrame) -> pd.DataFrame:
    """Macro F1 per (dataset, model, template, shots, calibration), raw next to calibrated."""
    if calibration_metrics.empty:
        return pd.DataFrame()
    return summarize(_with_columns(calibration_metrics, {"shots": 0}), CALIBRATION_COLUMNS)


def domain_table(domain_metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean macro F1 per system and domain (in_domain, out_of_domain, all), over templates, runs
    and seeds. Finetune rows are full-train runs only, as in the encoder tables."""
    if domain_metrics.empty:
        return pd.DataFrame()
    frame = _with_columns(domain_metrics, {"shots": 0})
    keep = (frame["method"] != "finetune") | (frame["train_size"].astype(str) == "all")
    return summarize(frame[keep], DOMAIN_COLUMNS)


def build_breakdown_tables(
    calibration_metrics: pd.DataFrame,
    domain_metrics: pd.DataFrame,
    statistics: pd.DataFrame,
    run_metrics: pd.DataFrame,
    finetune_metrics: pd.DataFrame,
) -> dict[str, pd.DataFrame]:
    """Build the three tables, keyed by name, with an empty frame where nothing feeds a table yet."""
    return {
        "by_calibration": calibration_table(calibration_metrics),
        "by_domain": domain_table(domain_metrics),
        "dataset_vs_results": statistics_vs_results(
            statistics, run_metrics, full_train_runs(finetune_metrics), calibration_metrics
        ),
    }
