"""Dataset statistics (size, label balance, text length, lexical overlap between classes) and the
table that sets them against each dataset's best finetune and prompted macro F1.

Statistics describe the whole splits as read from the files, not the evaluation or train samples.
For sentence-pair datasets the text fields are joined with a space before counting.
"""

from __future__ import annotations

import itertools
import json
import string

import numpy as np
import pandas as pd

from .spec import DatasetSpec
from .summaries import FLAG_COLUMNS

TRAIN_ROLE = "train"
EVAL_ROLE = "evaluation"
# Punctuation stripped from both ends of a token before it enters a class vocabulary.
_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"


def _texts(frame: pd.DataFrame, text_fields: list[str]) -> pd.Series:
    return frame[text_fields].astype(str).agg(" ".join, axis=1)


def vocabulary(texts: pd.Series) -> set[str]:
    """Lowercased whitespace tokens with surrounding punctuation stripped; empty tokens dropped."""
    words = set()
    for text in texts:
        for token in text.lower().split():
            token = token.strip(_PUNCTUATION)
            if token:
                words.add(token)
    return words


def jaccard(first: set[str], second: set[str]) -> float:
    union = first | second
    return len(first & second) / len(union) if union else float("nan")


def class_vocabulary_jaccard(texts: pd.Series, labels: pd.Series) -> float:
    """Mean Jaccard similarity of the class vocabularies over all pairs of classes present.

    NOTE: a larger class has a larger vocabulary, so the value also falls with label imbalance.
    Compare datasets of similar size and balance, or read it beside minority_class_share.
    """
    vocabularies = [vocabulary(texts[labels == label]) for label in sorted(labels.unique())]
    pairs = list(itertools.combinations(vocabularies, 2))
    if not pairs:
        return float("nan")
    return float(np.mean([jaccard(first, second) for first, second in pairs]))


def split_statistics(examples: pd.DataFrame, dataset: DatasetSpec) -> pd.DataFrame:
    """Describe each split of the dataset asset's table in one row: examples, sample size, label
    counts and shares, mean and median length in whitespace tokens and characters, and class
    vocabulary Jaccard."""
    rows = []
    for role, split in ((TRAIN_ROLE, dataset.train_split), (EVAL_ROLE, dataset.eval_split)):
        frame = examples[examples["split"] == split]
        if frame.empty:
            continue
        texts = _texts(frame, dataset.text_fields)
        tokens = texts.str.split().str.len()
        characters = texts.str.len()
        counts = frame["label"].value_counts()
        shares = {name: float(counts.get(i, 0)) / len(frame) for i, name in enumerate(dataset.label_names)}
        rows.append({
            "dataset": dataset.id, "split": split, "role": role, "examples": len(frame),
            "sample_examples": int(frame["in_sample"].sum()) if "in_sample" in frame else len(frame),
            "n_classes": len(dataset.label_names),
            "label_counts": json.dumps({name: int(counts.get(i, 0)) for i, name in enumerate(dataset.label_names)}),
            "minority_class_share": min(shares.values()), "majority_class_share": max(shares.values()),
            "mean_tokens": float(tokens.mean()), "median_tokens": float(tokens.median()),
            "mean_chars": float(characters.mean()), "median_chars": float(characters.median()),
            "vocabulary_size": len(vocabulary(texts)),
            "class_vocabulary_jaccard": class_vocabulary_jaccard(texts, frame["label"]),
            "text_fields": json.dumps(dataset.text_fields),
        })
    return pd.DataFrame(rows)


def _best_mean(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per dataset, the group of `by` with the highest mean macro F1, that mean, and whether any of
    its runs is flagged (one class, near chance or mostly invalid)."""
    present = [column for column in FLAG_COLUMNS if column in frame]
    flagged = frame[present].eq(True).any(axis=1) if present else False
    means = (frame.assign(flagged=flagged).groupby(["dataset", *by], dropna=False)
             .agg(macro_f1=("macro_f1", "mean"), flagged=("flagged", "any")).reset_index())
    best = means.loc[means.groupby("dataset")["macro_f1"].idxmax()]
    return best.set_index("dataset")


# Statistics of the train split carried into the one-row-per-dataset table.
STATISTIC_COLUMNS = (
    "examples", "minority_class_share", "mean_tokens", "median_tokens", "mean_chars", "class_vocabulary_jaccard",
)


def statistics_vs_results(
    statistics: pd.DataFrame,
    run_metrics: pd.DataFrame,
    finetune_metrics: pd.DataFrame,
    calibration_metrics: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Build one row per dataset with statistics: its train-split statistics, evaluation size, and the
    best mean macro F1 of a finetuned encoder, a prompted (model, template, method, shots) and a
    calibrated label-scoring (model, template, calibration), each with the configuration.

    Means are over seeds or runs; the best is picked on the evaluation sample, so it is an
    optimistic estimate. Finetune rows should be full-train runs. A dataset without results gets NaN.
    """
    if statistics.empty:
        return pd.DataFrame()
    rows = []
    for dataset, group in statistics.groupby("dataset", sort=True):
        by_role = group.set_index("role")
        row: dict[str, object] = {"dataset": dataset}
        for column in STATISTIC_COLUMNS:
            row[f"train_{column}"] = by_role.loc[TRAIN_ROLE, column] if TRAIN_ROLE in by_role.index else np.nan
        row["eval_examples"] = int(by_role.loc[EVAL_ROLE, "examples"]) if EVAL_ROLE in by_role.index else 0
        rows.append(row)
    table = pd.DataFrame(rows).set_index("dataset")

    sources = [
        ("finetune", finetune_metrics, ["encoder"]),
        ("prompted", run_metrics, [c for c in ("method", "model", "template", "shots") if c in run_metrics]),
    ]
    if calibration_metrics is not None and not calibration_metrics.empty:
        calibrated = calibration_metrics[calibration_metrics["calibration"] != "raw"]
        sources.append(("calibrated", calibrated, ["model", "template", "calibration"]))
    for name, frame, by in sources:
        table[f"best_{name}_f1"] = np.nan
        table[f"best_{name}"] = ""
        table[f"best_{name}_flagged"] = False
        if frame is None or frame.empty:
            continue
        best = _best_mean(frame, by)
        for dataset, choice in best.iterrows():
            if dataset in table.index:
                table.loc[dataset, f"best_{name}_f1"] = float(choice["macro_f1"])
                table.loc[dataset, f"best_{name}"] = " / ".join(str(choice[column]) for column in by)
                table.loc[dataset, f"best_{name}_flagged"] = bool(choice["flagged"])
    table["finetune_minus_prompted"] = table["best_finetune_f1"] - table["best_prompted_f1"]
    return table.reset_index()
