"""Summary tables: mean +- std and median of stored per-run metrics, grouped by each study question.

Tables only aggregate rows of prompt_run_metrics, vote_metrics and finetune_metrics; no metric is
recomputed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .answer_formats import DEFAULT_ANSWER_FORMAT
from .metrics import format_mean_std

SUMMARY_METRICS = ("macro_precision", "macro_recall", "macro_f1")
FLAG_COLUMNS = ("flag_one_class", "flag_near_chance", "flag_below_chance", "flag_high_invalid")

# Each prompted table: its name, the research question it answers, and its grouping columns.
PROMPTED_TABLES: dict[str, tuple[str, list[str]]] = {
    "by_prompt_model": ("How does F1 vary by template for each model?", ["dataset", "method", "model", "template"]),
    "by_prompt": ("Does the choice of template change F1, across models?", ["dataset", "method", "template"]),
    "by_model": ("Which model is best, across templates?", ["dataset", "method", "model"]),
    "by_family": ("Does the model family matter?", ["dataset", "method", "family"]),
    "by_size": ("Does F1 grow with model size?", ["dataset", "method", "params_b"]),
    "dense_vs_moe": ("Do mixture-of-experts models differ from dense ones?", ["dataset", "method", "is_moe"]),
}
QUESTIONS = {
    **{name: question for name, (question, _) in PROMPTED_TABLES.items()},
    "by_vote_k": "Does a majority vote over k runs beat a single run?",
    "by_encoder": "How does F1 grow with encoder size?",
    "by_train_size": "How does F1 grow with the number of labeled examples, finetuned on or shown as k shots?",
    "comparison": "Does prompting the best model match finetuning an encoder?",
    "cross_dataset": "Across datasets, how does the best prompted configuration compare with each encoder?",
    # Built by breakdown_tables.py from calibration_metrics, domain_metrics and dataset_statistics.
    "by_calibration": "Does calibrating label scores on train data raise F1, per model and template?",
    "by_domain": "Does F1 differ between in-domain and out-of-domain examples?",
    "dataset_vs_results": "Do dataset statistics go with the finetune and prompted F1 a dataset reaches?",
    # Built by contamination_tables.py from contamination_summary and prompt_run_metrics.
    "by_contamination": "Does a model reproduce the evaluation sentences more than controls, beside its prompted F1?",
    # Built by prompt_setting_tables.py from prompt_run_metrics.
    "by_temperature": "How do F1 and its run-to-run std change with the sampling temperature?",
    "by_answer_format": "How do F1, validity and cost change with the answer format (rationale, its place and length)?",
}


def summarize(frame: pd.DataFrame, by: list[str], metrics: tuple[str, ...] = SUMMARY_METRICS) -> pd.DataFrame:
    """One row per group: n, each metric as 'mean +- std', its mean, std and median, and flag counts."""
    if frame.empty:
        return pd.DataFrame(columns=[*by, "n"])
    rows = []
    for keys, group in frame.groupby(by, dropna=False, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row: dict[str, object] = dict(zip(by, keys))
        row["n"] = len(group)
        for metric in metrics:
            values = group[metric].to_numpy(dtype=float)
            row[metric] = format_mean_std(values)
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
            row[f"{metric}_median"] = float(np.median(values))
        if "invalid_rate" in group:
            row["invalid_rate_mean"] = float(group["invalid_rate"].mean())
        present = [flag for flag in FLAG_COLUMNS if flag in group]
        if present:
            flagged = group[present].any(axis=1)
            row["flagged_runs"] = int(flagged.sum())
            row["flags"] = ",".join(flag.removeprefix("flag_") for flag in present if group[flag].any())
        if "model" in group and "model" not in by:
            row["models"] = ",".join(sorted(group["model"].unique()))
        rows.append(row)
    return pd.DataFrame(rows)


def vote_table(run_metrics: pd.DataFrame, vote_metrics: pd.DataFrame) -> pd.DataFrame:
    """F1 by vote size k per model, with k = 1 taken from the single runs."""
    single = run_metrics.assign(k=1)[["dataset", "method", "model", "template", "k", *SUMMARY_METRICS]]
    frames = [single]
    if not vote_metrics.empty:
        frames.append(vote_metrics[["dataset", "method", "model", "template", "k", *SUMMARY_METRICS]])
    return summarize(pd.concat(frames, ignore_index=True), ["dataset", "method", "model", "k"])


def comparison_table(run_metrics: pd.DataFrame, finetune_metrics: pd.DataFrame) -> pd.DataFrame:
    """Each model's best template and its mean over templates, set against each encoder.

    The best template is picked by mean F1 on the evaluation split, as the reference study does,
    so the best-template column is an optimistic estimate for prompting.
    """
    if run_metrics.empty or finetune_metrics.empty:
        return pd.DataFrame()
    per_template = summarize(run_metrics, ["dataset", "method", "model", "template"])
    per_model = summarize(run_metrics, ["dataset", "method", "model"])
    encoders = summarize(finetune_metrics, ["dataset", "encoder", "params_m"])
    rows = []
    for _, model in per_model.iterrows():
        templates = per_template[
            (per_template["dataset"] == model["dataset"])
            & (per_template["method"] == model["method"])
            & (per_template["model"] == model["model"])
        ]
        best = templates.loc[templates["macro_f1_mean"].idxmax()]
        for _, encoder in encoders[encoders["dataset"] == model["dataset"]].iterrows():
            rows.append(
                {
                    "dataset": model["dataset"], "method": model["method"], "model": model["model"],
                    "best_template": best["template"], "best_template_f1": best["macro_f1"],
                    "best_template_f1_mean": best["macro_f1_mean"], "best_template_f1_std": best["macro_f1_std"],
                    "mean_over_templates_f1": model["macro_f1"], "mean_over_templates_f1_mean": model["macro_f1_mean"],
                    "mean_over_templates_f1_std": model["macro_f1_std"],
                    "encoder": encoder["encoder"], "encoder_params_m": encoder["params_m"],
                    "encoder_f1": encoder["macro_f1"], "encoder_f1_mean": encoder["macro_f1_mean"],
                    "encoder_f1_std": encoder["macro_f1_std"],
                    "encoder_minus_best_template": encoder["macro_f1_mean"] - best["macro_f1_mean"],
                    "prompted_flagged_runs": model.get("flagged_runs", 0), "encoder_flagged_seeds": encoder.get("flagged_runs", 0),
                }
            )
    return pd.DataFrame(rows)


def cross_dataset_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset: the best prompted (model, template) and each encoder's mean F1 beside it."""
    if comparison.empty:
        return pd.DataFrame()
    rows = []
    for dataset, group in comparison.groupby("dataset"):
        best = group.loc[group["best_template_f1_mean"].idxmax()]
        row = {
            "dataset": dataset, "best_model": best["model"], "best_template": best["best_template"],
            "method": best["method"], "best_prompted_f1": best["best_template_f1"],
            "best_prompted_f1_mean": best["best_template_f1_mean"],
        }
        for _, encoder in group.drop_duplicates("encoder").iterrows():
            row[f"{encoder['encoder']}_f1"] = encoder["encoder_f1"]
            row[f"{encoder['encoder']}_minus_best_prompted"] = encoder["encoder_f1_mean"] - best["best_template_f1_mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def full_train_runs(finetune_metrics: pd.DataFrame) -> pd.DataFrame:
    """The finetune runs that trained on the whole train pool (train_size null); all rows of older
    tables without the column. Encoder-size tables use only these, so train sizes never mix."""
    if finetune_metrics.empty or "train_size" not in finetune_metrics:
        return finetune_metrics
    return finetune_metrics[finetune_metrics["train_size"].isna()]


# Grouping columns of the learning-curve table; x is train_examples, one line per (method, model).
TRAIN_SIZE_COLUMNS = ["dataset", "method", "model", "family", "train_examples"]


def zero_shot_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the zero-shot rows of prompted metrics or votes. Rows stored before the shots column existed are zero-shot.

    The per-question prompted tables, the vote table, the comparison and the report use these rows,
    so k-shot runs enter only the learning curve.
    """
    if frame.empty or "shots" not in frame:
        return frame
    return frame[frame["shots"].fillna(0) == 0]


def default_setting_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the prompted rows sampled at the model's default temperature in the default answer format,
    and every label-scoring row. Rows stored before those columns existed are kept.

    The per-question tables, votes, learning curve and comparison use these rows, so runs of
    prompting.temperatures and prompting.answer_formats enter only by_temperature and by_answer_format.
    """
    if frame.empty:
        return frame
    keep = pd.Series(True, index=frame.index)
    if "temperature_is_default" in frame:
        keep &= frame["temperature_is_default"].fillna(True).astype(bool)
    if "answer_format" in frame:
        keep &= frame["answer_format"].isna() | (frame["answer_format"] == DEFAULT_ANSWER_FORMAT)
    return frame[keep]


def baseline_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the zero-shot rows at the default temperature and answer format (zero_shot_rows, default_setting_rows)."""
    return default_setting_rows(zero_shot_rows(frame))


# Method label of prompted rows on the learning curve: "k-shot generate" or "k-shot score".
KSHOT_METHOD_PREFIX = "k-shot "


def kshot_curve_rows(run_metrics: pd.DataFrame) -> pd.DataFrame:
    """Prompted runs as learning-curve rows: train_examples is the number of shots (0 for zero-shot),
    method is 'k-shot <method>' and model the prompt model. Templates are pooled, so one point is the
    mean over every template and run of a (model, method, shots)."""
    if run_metrics.empty:
        return pd.DataFrame()
    shots = run_metrics["shots"].fillna(0).astype(int) if "shots" in run_metrics else 0
    frame = run_metrics.assign(method=KSHOT_METHOD_PREFIX + run_metrics["method"].astype(str), train_examples=shots)
    return frame[[*TRAIN_SIZE_COLUMNS, *SUMMARY_METRICS, *(c for c in FLAG_COLUMNS if c in frame)]]


def train_size_table(finetune_metrics: pd.DataFrame, other_methods: pd.DataFrame | None = None) -> pd.DataFrame:
    """F1 against the number of training examples, one group per (dataset, method, model, family, n).

    Finetune rows get method 'finetune' and model = encoder. other_methods is where k-shot
    prompting joins the same axis: rows with the TRAIN_SIZE_COLUMNS (train_examples = k, the
    number of shots) and the summary metrics.
    """
    frames = []
    if not finetune_metrics.empty:
        # Rows stored before the method and family columns existed read them as missing.
        finetuned = finetune_metrics.assign(
            model=finetune_metrics["encoder"],
            method=finetune_metrics.get("method", pd.Series(index=finetune_metrics.index, dtype=object)).fillna("finetune"),
            family=finetune_metrics.get("family", pd.Series(index=finetune_metrics.index, dtype=object)).fillna(""),
        )
        frames.append(finetuned[[*TRAIN_SIZE_COLUMNS, *SUMMARY_METRICS, *(c for c in FLAG_COLUMNS if c in finetuned)]])
    if other_methods is not None and not other_methods.empty:
        frames.append(other_methods)
    if not frames:
        return pd.DataFrame(columns=[*TRAIN_SIZE_COLUMNS, "n"])
    return summarize(pd.concat(frames, ignore_index=True), TRAIN_SIZE_COLUMNS)


def build_summary_tables(
    run_metrics: pd.DataFrame, vote_metrics: pd.DataFrame, finetune_metrics: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """All summary tables, keyed by name. Prompted tables use zero-shot runs at the default temperature
    and answer format; the learning curve (by_train_size) sets k-shot prompting beside finetuning."""
    tables: dict[str, pd.DataFrame] = {}
    zero_shot = baseline_rows(run_metrics)
    for name, (_, by) in PROMPTED_TABLES.items():
        tables[name] = summarize(zero_shot, by)
    tables["by_vote_k"] = vote_table(zero_shot, baseline_rows(vote_metrics)) if not zero_shot.empty else pd.DataFrame()
    full_train = full_train_runs(finetune_metrics)
    tables["by_encoder"] = summarize(full_train, ["dataset", "encoder", "params_m"])
    tables["by_train_size"] = train_size_table(finetune_metrics, kshot_curve_rows(default_setting_rows(run_metrics)))
    tables["comparison"] = comparison_table(zero_shot, full_train)
    tables["cross_dataset"] = cross_dataset_table(tables["comparison"])
    return tables
