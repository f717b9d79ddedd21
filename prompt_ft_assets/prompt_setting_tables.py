"""Summary tables of the sampling temperature and the answer format of generate runs.

Like summaries.py, these only aggregate stored prompt_run_metrics rows, and no metric is
recomputed here. Both tables use zero-shot generate runs and group by template, so the std of a row is the
run-to-run std of one (model, template, temperature, answer format).
"""

from __future__ import annotations

import pandas as pd

from .answer_formats import DEFAULT_ANSWER_FORMAT
from .summaries import summarize, zero_shot_rows

TEMPERATURE_COLUMNS = ["dataset", "model", "template", "answer_format", "temperature"]
ANSWER_FORMAT_COLUMNS = ["dataset", "model", "template", "temperature", "answer_format"]
# Per-run columns of prompt_run_metrics averaged over the runs of an answer-format row.
FORMAT_COST_COLUMNS = ("invalid_rate", "format_followed_rate", "mean_completion_tokens", "completion_tokens_per_1000",
                       "seconds_per_1000")


def _generate_runs(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot generate rows, with the setting columns filled in for rows stored before they existed."""
    if run_metrics.empty:
        return run_metrics
    frame = zero_shot_rows(run_metrics)
    frame = frame[frame["method"] == "generate"]
    defaults = {"temperature_is_default": True, "answer_format": DEFAULT_ANSWER_FORMAT}
    for column, default in defaults.items():
        frame = frame.assign(**{column: frame[column].fillna(default) if column in frame else default})
    if "temperature" not in frame:
        # Rows stored before the column existed ran at the model's default, whose value they do not record.
        frame = frame.assign(temperature=float("nan"))
    return frame.assign(temperature_is_default=frame["temperature_is_default"].astype(bool))


def _group_means(frame: pd.DataFrame, by: list[str], columns: tuple[str, ...]) -> pd.DataFrame:
    present = [column for column in columns if column in frame]
    return frame.groupby(by, dropna=False, sort=True)[present].mean().reset_index()


def temperature_table(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Macro F1 (mean +- run-to-run std) per (dataset, model, template, answer format, temperature).

    model_default marks the model card's temperature, the runs without a t part in their key.
    """
    frame = _generate_runs(run_metrics)
    if frame.empty:
        return pd.DataFrame()
    # The invalid rate is merged below as invalid_rate, which the markdown preview shows.
    table = summarize(frame, TEMPERATURE_COLUMNS).drop(columns="invalid_rate_mean", errors="ignore")
    defaults = frame.groupby(TEMPERATURE_COLUMNS, dropna=False, sort=True)["temperature_is_default"].any().reset_index()
    table = table.merge(defaults.rename(columns={"temperature_is_default": "model_default"}), on=TEMPERATURE_COLUMNS)
    return table.merge(_group_means(frame, TEMPERATURE_COLUMNS, ("invalid_rate",)), on=TEMPERATURE_COLUMNS)


def answer_format_table(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Macro F1, invalid rate, format compliance and cost per (dataset, model, template, temperature,
    answer format), each a mean over runs. Cost is completion tokens and busy seconds per 1,000
    classifications, measured on the machine that ran them."""
    frame = _generate_runs(run_metrics)
    if frame.empty:
        return pd.DataFrame()
    table = summarize(frame, ANSWER_FORMAT_COLUMNS).drop(columns="invalid_rate_mean", errors="ignore")
    return table.merge(_group_means(frame, ANSWER_FORMAT_COLUMNS, FORMAT_COST_COLUMNS), on=ANSWER_FORMAT_COLUMNS)


def build_prompt_setting_tables(run_metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {"by_temperature": temperature_table(run_metrics), "by_answer_format": answer_format_table(run_metrics)}
