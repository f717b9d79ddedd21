"""The contamination table: each model's probe results beside its prompted macro F1.

Like summaries.py, this only joins stored rows (contamination_summary, prompt_run_metrics). The
probe's scores and intervals are not recomputed here.
"""

from __future__ import annotations

import pandas as pd

from .summaries import FLAG_COLUMNS, baseline_rows

# Columns of contamination_summary that the table keeps, in order.
PROBE_COLUMNS = [
    "dataset", "model", "control", "n_examples",
    "real_exact_match", "control_exact_match", "exact_match_difference", "exact_match_difference_low",
    "exact_match_difference_high",
    "real_lcs_ratio", "control_lcs_ratio", "lcs_ratio_difference", "lcs_ratio_difference_low", "lcs_ratio_difference_high",
    "real_logprob_per_token", "control_logprob_per_token", "logprob_per_token_difference",
    "logprob_per_token_difference_low", "logprob_per_token_difference_high",
    "flag_reproduced", "seed", "model_sha256",
]


def prompted_f1_by_model(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Compute the mean and sample std of macro F1 over each (dataset, model)'s zero-shot prompted runs at the
    default temperature and answer format, with the run count, the methods pooled (generate, score) and the
    runs with a degenerate-run flag."""
    runs = baseline_rows(run_metrics)
    if runs.empty:
        return pd.DataFrame({"dataset": pd.Series(dtype=object), "model": pd.Series(dtype=object),
                             "prompted_runs": pd.Series(dtype=float), "prompted_methods": pd.Series(dtype=object),
                             "prompted_flagged_runs": pd.Series(dtype=float),
                             "prompted_macro_f1": pd.Series(dtype=float), "prompted_macro_f1_std": pd.Series(dtype=float)})
    rows = []
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=True):
        values = group["macro_f1"].astype(float)
        flags = [column for column in FLAG_COLUMNS if column in group]
        flagged = int(group[flags].fillna(False).astype(bool).any(axis=1).sum()) if flags else 0
        rows.append({
            "dataset": dataset, "model": model, "prompted_runs": len(group),
            "prompted_methods": ",".join(sorted(group["method"].astype(str).unique())),
            "prompted_flagged_runs": flagged,
            "prompted_macro_f1": float(values.mean()),
            "prompted_macro_f1_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        })
    return pd.DataFrame(rows)


def contamination_table(summary: pd.DataFrame, run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Build one row per (dataset, model, control): the probe's real and control scores, their differences
    with 95% bootstrap intervals and the flag, then the model's prompted F1 on that dataset.

    The F1 columns are empty (prompted_runs 0) for a model without zero-shot prompted runs yet.
    """
    if summary.empty:
        return pd.DataFrame()
    table = summary[[column for column in PROBE_COLUMNS if column in summary]]
    table = table.merge(prompted_f1_by_model(run_metrics), on=["dataset", "model"], how="left")
    table["prompted_runs"] = table["prompted_runs"].fillna(0).astype(int)
    table["prompted_flagged_runs"] = table["prompted_flagged_runs"].fillna(0).astype(int)
    table["prompted_methods"] = table["prompted_methods"].fillna("")
    return table.sort_values(["dataset", "model", "control"]).reset_index(drop=True)
