"""Data-quality statistics of a stored dataset: empty text, undeclared labels, balance, duplicates, overlap."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from .spec import DatasetSpec

# A class under this share of a split is reported as a strong imbalance.
MIN_CLASS_SHARE = 0.10


@dataclass(frozen=True)
class DatasetQuality:
    empty_texts: int
    undeclared_labels: int
    min_class_share: dict[str, float]
    duplicated_texts: dict[str, int]
    conflicting_duplicates: dict[str, int]
    eval_texts_in_train: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _text_key(frame: pd.DataFrame, fields: list[str]) -> pd.Series:
    # Sentence pairs are joined with a separator that cannot occur in TSV text.
    return frame[fields].astype(str).agg("\t".join, axis=1)


def dataset_quality(frame: pd.DataFrame, config: DatasetSpec) -> DatasetQuality:
    """Counts over the stored rows of both splits; duplicates count distinct texts seen more than once."""
    empty = int(sum((frame[field].astype(str).str.strip() == "").sum() for field in config.text_fields))
    undeclared = int((~frame["label"].between(0, len(config.label_names) - 1)).sum())
    shares, duplicated, conflicting = {}, {}, {}
    keys = _text_key(frame, config.text_fields)
    for split, rows in frame.groupby("split"):
        shares[split] = float(rows["label"].value_counts(normalize=True).min())
        split_keys = keys[rows.index]
        counts = split_keys.value_counts()
        duplicated[split] = int((counts > 1).sum())
        labels_per_text = rows.assign(_key=split_keys).groupby("_key")["label"].nunique()
        conflicting[split] = int((labels_per_text > 1).sum())
    train_keys = set(keys[frame["split"] == config.train_split])
    eval_keys = set(keys[frame["split"] == config.eval_split])
    return DatasetQuality(empty, undeclared, shares, duplicated, conflicting, len(eval_keys & train_keys))
