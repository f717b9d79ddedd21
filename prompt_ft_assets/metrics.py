"""Classification metrics and degenerate-run flags, each defined once.

Predictions are class indices; INVALID_LABEL (-1) marks an answer that maps to no class. An
invalid answer counts as wrong: it is a false negative for its true class and a false positive
for none, as scikit-learn scores a prediction outside `labels`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .parsing import INVALID_LABEL

# A run is flagged when more than this share of its answers is invalid.
HIGH_INVALID_RATE = 0.10
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class ClassificationMetrics:
    n: int
    macro_precision: float
    macro_recall: float
    macro_f1: float
    accuracy: float
    mcc: float
    invalid_rate: float
    n_invalid: int
    n_predicted_classes: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class); the last column holds invalid predictions."""
    matrix = np.zeros((n_classes, n_classes + 1), dtype=np.int64)
    predicted = np.where(y_pred == INVALID_LABEL, n_classes, y_pred)
    np.add.at(matrix, (y_true, predicted), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0)


def matthews_corrcoef(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Multiclass MCC (Gorodkin, 2004); invalid predictions form a class of their own."""
    classes = np.union1d(y_true, y_pred)
    true_index = np.searchsorted(classes, y_true)
    pred_index = np.searchsorted(classes, y_pred)
    matrix = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(matrix, (true_index, pred_index), 1)
    t = matrix.sum(axis=1)
    p = matrix.sum(axis=0)
    c = np.trace(matrix)
    s = matrix.sum()
    denominator = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    if denominator == 0:
        return 0.0
    return float((c * s - t @ p) / denominator)


def classification_metrics(y_true, y_pred, n_classes: int) -> ClassificationMetrics:
    """Macro precision, recall and F1 over the n_classes labels, accuracy, MCC and the invalid rate."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"true labels must lie in 0..{n_classes - 1}, got {sorted(set(y_true.tolist()))}")
    bad = set(y_pred[(y_pred != INVALID_LABEL) & ((y_pred < 0) | (y_pred >= n_classes))].tolist())
    if bad:
        raise ValueError(f"predicted labels {sorted(bad)} are outside 0..{n_classes - 1} and are not INVALID_LABEL")

    matrix = confusion_matrix(y_true, y_pred, n_classes)
    true_positive = np.diag(matrix[:, :n_classes]).astype(float)
    predicted = matrix[:, :n_classes].sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = _safe_divide(true_positive, predicted)
    recall = _safe_divide(true_positive, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    n_invalid = int((y_pred == INVALID_LABEL).sum())
    valid_predictions = y_pred[y_pred != INVALID_LABEL]
    return ClassificationMetrics(
        n=int(y_true.size),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        accuracy=float(true_positive.sum() / y_true.size),
        mcc=matthews_corrcoef(y_true, y_pred),
        invalid_rate=n_invalid / y_true.size,
        n_invalid=n_invalid,
        n_predicted_classes=int(np.unique(valid_predictions).size),
    )


def bootstrap_mcc_interval(y_true, y_pred, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile 95% bootstrap interval of the MCC, resampling examples with a fixed seed."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    rng = np.random.default_rng(seed)
    scores = np.empty(resamples)
    for i in range(resamples):
        index = rng.integers(0, y_true.size, y_true.size)
        scores[i] = matthews_corrcoef(y_true[index], y_pred[index])
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class RunFlags:
    one_class: bool
    near_chance: bool
    high_invalid: bool
    mcc_ci_low: float
    mcc_ci_high: float
    # The whole MCC interval is below 0, so the run agrees with the truth less than chance would, as
    # when a model reads a template's answer choices the wrong way round.
    below_chance: bool = False

    @property
    def labels(self) -> str:
        names = [name for name in ("one_class", "near_chance", "below_chance", "high_invalid") if getattr(self, name)]
        return ",".join(names)

    def columns(self) -> dict[str, object]:
        """Return the flag columns of a metrics row: the MCC interval, one boolean per flag and their labels."""
        return {
            "mcc_ci_low": self.mcc_ci_low, "mcc_ci_high": self.mcc_ci_high,
            "flag_one_class": self.one_class, "flag_near_chance": self.near_chance,
            "flag_below_chance": self.below_chance, "flag_high_invalid": self.high_invalid, "flags": self.labels,
        }


def degenerate_run_flags(y_true, y_pred, n_classes: int, seed: int = 0) -> RunFlags:
    """Flag a run that predicts one class, agrees with the truth at chance level or below it, or is
    mostly invalid.

    near_chance holds when the bootstrap 95% interval of the MCC contains 0, and below_chance when
    the whole interval is below 0.
    """
    metrics = classification_metrics(y_true, y_pred, n_classes)
    low, high = bootstrap_mcc_interval(y_true, y_pred, seed=seed)
    return RunFlags(
        one_class=metrics.n_predicted_classes <= 1,
        near_chance=low <= 0.0 <= high,
        high_invalid=metrics.invalid_rate > HIGH_INVALID_RATE,
        mcc_ci_low=low,
        mcc_ci_high=high,
        below_chance=high < 0.0,
    )


def format_mean_std(values) -> str:
    """Format as the study's tables do: '0.8017 +- 0.0082' (sample std, ddof=1; 0 for one value)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return ""
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return f"{array.mean():.4f} +- {std:.4f}"
