"""Training sets for finetuning: the train pool, its held-out fold, train-size subsamples and folds.

Every function here takes the train split's rows and nothing else, so hyperparameter selection
and learning curves never see an evaluation example. The pool is the stratified train sample
(`in_sample` rows of the train split). With k_fold >= 2 one stratified fold of the pool,
current_fold, is held out of training and scored; the final model and the hyperparameter
selection both train on the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .datasets_io import stratified_sample
from .spec import DatasetSpec, FinetuneSettings


class TrainSizeError(ValueError):
    """A train size larger than the examples available for it."""


def stratified_folds(labels, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each row: each class is shuffled with seed and dealt round-robin over the folds.

    The deal continues from one class to the next, so fold sizes differ by at most one and each
    class's share differs by at most one example between folds.
    """
    labels = np.asarray(labels)
    if k < 2:
        raise ValueError(f"k {k} is invalid: cross-validation needs at least 2 folds")
    if labels.size < k:
        raise ValueError(f"{labels.size} examples cannot be split into {k} folds; use fewer folds or more examples")
    rng = np.random.default_rng(seed)
    folds = np.empty(labels.size, dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        positions = rng.permutation(np.flatnonzero(labels == label))
        folds[positions] = (np.arange(positions.size) + offset) % k
        offset += positions.size
    return folds


def train_pool(examples: pd.DataFrame, config: DatasetSpec) -> pd.DataFrame:
    """The train sample in index order; evaluation-split rows are dropped here."""
    pool = examples[(examples["split"] == config.train_split) & examples["in_sample"]].sort_values("idx")
    if pool.empty:
        raise ValueError(
            f"dataset {config.id!r} has no rows in its train split {config.train_split!r}; check train_split in the spec"
        )
    return pool.reset_index(drop=True)


def split_held_out_fold(pool: pd.DataFrame, settings: FinetuneSettings, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows): the pool less fold current_fold when k_fold >= 2, else (pool, no rows)."""
    if settings.k_fold < 2:
        return pool, pool.iloc[0:0]
    folds = stratified_folds(pool["label"].to_numpy(), settings.k_fold, seed)
    held_out = folds == settings.current_fold
    return pool[~held_out].reset_index(drop=True), pool[held_out].reset_index(drop=True)


def subsample(rows: pd.DataFrame, train_size: int | None, seed: int) -> pd.DataFrame:
    """A stratified sample of train_size rows drawn with seed; all rows when train_size is None.

    Raises TrainSizeError when train_size exceeds the rows available.
    """
    if train_size is None:
        return rows
    if train_size > len(rows):
        raise TrainSizeError(
            f"train size {train_size} exceeds the {len(rows)} training examples available "
            "(after train_limit and the k_fold held-out fold); lower it in finetune.train_sizes or use null for all"
        )
    chosen = stratified_sample(rows["label"].to_numpy(), train_size, seed)
    return rows.iloc[chosen].reset_index(drop=True)


def training_examples(
    examples: pd.DataFrame, config: DatasetSpec, settings: FinetuneSettings, train_size: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """The rows a finetune run trains on: the train pool less the held-out fold, subsampled to train_size.

    The held-out fold is drawn with the dataset's train_seed, so it is the same for every seed and
    encoder. The subsample is drawn with the run's seed, so seeds differ in the examples as well
    as in the initialization, and every encoder sees the same examples for a given seed.
    """
    fitting, _ = split_held_out_fold(train_pool(examples, config), settings, config.train_seed)
    return subsample(fitting, train_size, seed)


def held_out_examples(examples: pd.DataFrame, config: DatasetSpec, settings: FinetuneSettings) -> pd.DataFrame:
    """The held-out fold of the train pool; no rows when k_fold is off."""
    _, held_out = split_held_out_fold(train_pool(examples, config), settings, config.train_seed)
    return held_out


@dataclass(frozen=True)
class SelectionFold:
    fold: int
    fit: pd.DataFrame
    held_out: pd.DataFrame


def selection_folds(
    rows: pd.DataFrame, k: int, train_size: int | None, seed: int
) -> Iterator[SelectionFold]:
    """The cross-validation folds for hyperparameter selection over the given train rows.

    Fold f trains on a stratified sample of train_size rows (all when None) from the other folds
    and is scored on fold f. When train_size exceeds the other folds' rows, all of them are used,
    because selection only needs a comparable fit size, not the exact one.
    """
    folds = stratified_folds(rows["label"].to_numpy(), k, seed)
    for fold in range(k):
        fit = rows[folds != fold].reset_index(drop=True)
        size = None if train_size is None or train_size >= len(fit) else train_size
        yield SelectionFold(fold, subsample(fit, size, seed + fold), rows[folds == fold].reset_index(drop=True))
