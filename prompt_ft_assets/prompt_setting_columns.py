"""Columns of a prompted run's metrics row that describe its sampling temperature and answer format,
and what its answers cost, read from the run's stored predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .answer_formats import DEFAULT_ANSWER_FORMAT
from .report_content import busy_seconds

GENERATE_METHOD = "generate"
# Costs are given per this many classifications, as in the report's cost table.
COST_UNIT = 1000.0


def busy_seconds_per_thousand(predictions: pd.DataFrame) -> float:
    """Wall seconds the partition spent generating, per 1,000 answers.

    Each answer's busy_s, its share of the wall time of the call that computed it, is summed, as
    the report's cost table does. For answers stored before busy_s existed, the answers of a
    batched backend overlap in time, so the union of each answer's [finished_at - latency_s,
    finished_at] interval is counted; without finished_at the latencies are summed, which assumes
    one answer at a time.
    """
    if predictions.empty:
        return float("nan")
    if "busy_s" in predictions and predictions["busy_s"].notna().all():
        # Each answer's share of the wall time of the call that computed it (prompt_runner.py).
        return float(predictions["busy_s"].sum()) / len(predictions) * COST_UNIT
    latencies = predictions["latency_s"].to_numpy(dtype=float)
    if "finished_at" in predictions and predictions["finished_at"].notna().all():
        ends = pd.to_datetime(predictions["finished_at"], utc=True).astype("int64").to_numpy() / 1e9
        seconds = busy_seconds(ends - latencies, ends)
    else:
        seconds = float(latencies.sum())
    return seconds / len(predictions) * COST_UNIT


def run_setting_columns(predictions: pd.DataFrame, method: str) -> dict[str, object]:
    """temperature_is_default, answer_format, format_followed_rate and the cost columns of one partition.

    Predictions stored before these columns existed were sampled at the model's default temperature
    in the default format. Label scoring has no answer format, so its format columns are empty.
    """
    generate = method == GENERATE_METHOD
    is_default = True
    if "temperature_is_default" in predictions and predictions["temperature_is_default"].notna().any():
        is_default = bool(predictions["temperature_is_default"].iloc[0])
    answer_format = None
    if generate:
        stored = predictions["answer_format"].dropna() if "answer_format" in predictions else pd.Series(dtype=object)
        answer_format = str(stored.iloc[0]) if not stored.empty else DEFAULT_ANSWER_FORMAT
    followed = np.nan
    if generate and "format_followed" in predictions and predictions["format_followed"].notna().any():
        followed = float(predictions["format_followed"].astype(float).mean())
    return {
        "temperature_is_default": is_default,
        "answer_format": answer_format,
        "format_followed_rate": followed,
        "completion_tokens_per_1000": float(predictions["completion_tokens"].mean()) * COST_UNIT,
        "seconds_per_1000": busy_seconds_per_thousand(predictions),
    }
