"""Majority voting over combinations of prompted runs."""

from __future__ import annotations

from itertools import combinations
from typing import Iterator

import numpy as np

from .parsing import INVALID_LABEL


def majority_vote(predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Vote per example over the rows of a (runs, examples) array of class indices.

    Invalid answers cast no vote, and an example whose answers are all invalid stays invalid.
    A tie goes to the smallest class index among the tied classes, which is the smallest label
    in sorted order.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be a (runs, examples) array, got shape {predictions.shape}")
    counts = np.zeros((n_classes, predictions.shape[1]), dtype=np.int64)
    for label in range(n_classes):
        counts[label] = (predictions == label).sum(axis=0)
    # argmax returns the first maximum, so ties resolve to the smallest class index.
    winner = counts.argmax(axis=0)
    return np.where(counts.max(axis=0) == 0, INVALID_LABEL, winner)


def run_combinations(run_ids: list[int], k: int) -> Iterator[tuple[int, ...]]:
    """All C(n, k) combinations of the sorted run ids, in lexicographic order."""
    return combinations(sorted(run_ids), k)


def vote_sizes(n_runs: int) -> list[int]:
    """Vote sizes k from 2 to n-1: k = 1 is a single run and k = n has one combination."""
    return list(range(2, n_runs))
