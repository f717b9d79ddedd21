"""Calibration of label scores: contextual calibration and a per-class bias, fit on train data only.

Both start from choice_scores, the summed log-probability of each answer choice after the prompt
(one row per example, one column per class). The fits here see only the scores and labels they
are given, and `calibration_sample` draws its rows from the train split alone, so the evaluation
split can never shape a fitted parameter.

- contextual: Zhao et al. (2021), "Calibrate Before Use: Improving Few-Shot Performance of
  Language Models", arXiv 2102.09690. The choice probabilities of content-free inputs such as "N/A" estimate the
  prompt's bias. Every example's probabilities are divided by their mean and renormalized.
- threshold: a bias added to each class's log-probability, chosen to maximize macro F1 on a
  stratified train sample. For two classes this is a decision threshold on the log-odds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .datasets_io import stratified_sample
from .metrics import classification_metrics
from .parsing import INVALID_LABEL
from .spec import CalibrationSettings, DatasetSpec

RAW = "raw"
CONTEXTUAL = "contextual"
THRESHOLD = "threshold"
CALIBRATIONS = (RAW, CONTEXTUAL, THRESHOLD)
# Rounds of coordinate ascent over the class biases; two classes need one.
MAX_BIAS_ROUNDS = 10
TRAIN_SAMPLE = "train_sample"
CONTENT_FREE = "content_free"


class CalibrationError(ValueError):
    """Scores that cannot be calibrated, with the reason and the fix."""


def score_matrix(choice_scores: pd.Series | list[str], n_classes: int) -> np.ndarray:
    """Parse JSON lists of choice scores into a (rows, n_classes) array. A row that is not
    n_classes finite numbers becomes all NaN."""
    matrix = np.full((len(choice_scores), n_classes), np.nan)
    for i, text in enumerate(choice_scores):
        values = json.loads(text) if isinstance(text, str) else None
        if values is not None and len(values) == n_classes and all(np.isfinite(values)):
            matrix[i] = values
    return matrix


def choice_probabilities(scores: np.ndarray) -> np.ndarray:
    """Normalize each row's log-probabilities into probabilities over the choices (NaN rows stay NaN)."""
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    exponents = np.exp(shifted)
    return exponents / exponents.sum(axis=1, keepdims=True)


def _predict(adjusted: np.ndarray) -> np.ndarray:
    """Argmax per row, INVALID_LABEL for a row without finite scores."""
    valid = np.isfinite(adjusted).all(axis=1)
    predictions = np.full(adjusted.shape[0], INVALID_LABEL, dtype=np.int64)
    if valid.any():
        predictions[valid] = np.argmax(adjusted[valid], axis=1)
    return predictions


def fit_contextual(content_free_scores: np.ndarray) -> np.ndarray:
    """Mean choice probabilities of the content-free inputs; rows with non-finite scores are skipped."""
    valid = np.isfinite(content_free_scores).all(axis=1)
    if not valid.any():
        raise CalibrationError(
            f"none of the {len(content_free_scores)} content-free inputs has finite choice scores, so contextual "
            "calibration cannot be fit; change prompting.calibration.content_free_inputs"
        )
    return choice_probabilities(content_free_scores[valid]).mean(axis=0)


def apply_contextual(scores: np.ndarray, content_free_probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities (each row divided by the content-free mean and renormalized) and predictions."""
    divided = choice_probabilities(scores) / content_free_probabilities
    calibrated = divided / divided.sum(axis=1, keepdims=True)
    return calibrated, _predict(calibrated)


def _macro_f1(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    return classification_metrics(labels, predictions, n_classes).macro_f1


def _bias_candidates(scores: np.ndarray, bias: np.ndarray, column: int) -> np.ndarray:
    """Values of bias[column] worth trying: one inside each interval between the points where an
    example's prediction switches to or from `column`, and one beyond each end."""
    others = np.delete(scores + bias, column, axis=1)
    switch = np.unique(others.max(axis=1) - scores[:, column])
    if switch.size == 0:
        return np.array([0.0])
    midpoints = (switch[:-1] + switch[1:]) / 2
    return np.concatenate([[switch[0] - 1.0], midpoints, [switch[-1] + 1.0]])


def fit_class_bias(scores: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class biases added to the log-probabilities that maximize macro F1 on (scores, labels).

    Each round tries every useful value for each class's bias in turn, keeping the others fixed,
    and keeps a value only when it raises macro F1. Among equally good values the one closest to 0
    wins, so a sample on which the raw rule is already best leaves it unchanged. Two classes are
    solved exactly in the first step. For more classes this coordinate ascent can stop at a local
    optimum. The result is shifted so that class 0's bias is 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    valid = np.isfinite(scores).all(axis=1)
    scores, labels = scores[valid], labels[valid]
    if labels.size == 0:
        raise CalibrationError("no train calibration example has finite choice scores, so no threshold can be fit")
    bias = np.zeros(n_classes)
    best = _macro_f1(labels, _predict(scores + bias), n_classes)
    for _ in range(MAX_BIAS_ROUNDS):
        changed = False
        for column in range(n_classes):
            for value in sorted(_bias_candidates(scores, bias, column), key=abs):
                trial = bias.copy()
                trial[column] = value
                f1 = _macro_f1(labels, _predict(scores + trial), n_classes)
                if f1 > best + 1e-12:
                    best, bias, changed = f1, trial, True
        if not changed:
            break
    return bias - bias[0]


def apply_class_bias(scores: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities after adding the biases to the log-probabilities, and the predictions."""
    adjusted = scores + bias
    return choice_probabilities(adjusted), _predict(adjusted)


@dataclass(frozen=True)
class CalibrationFit:
    """The fitted parameters of one score partition; built from train-sample and content-free scores only."""

    content_free_probabilities: np.ndarray
    class_bias: np.ndarray
    train_macro_f1_raw: float
    train_macro_f1_contextual: float
    train_macro_f1_threshold: float

    def parameters(self, calibration: str) -> dict[str, list[float]]:
        if calibration == CONTEXTUAL:
            return {"content_free_probabilities": [float(v) for v in self.content_free_probabilities]}
        if calibration == THRESHOLD:
            return {"class_bias": [float(v) for v in self.class_bias]}
        return {}

    def train_macro_f1(self, calibration: str) -> float:
        return {RAW: self.train_macro_f1_raw, CONTEXTUAL: self.train_macro_f1_contextual,
                THRESHOLD: self.train_macro_f1_threshold}[calibration]


def fit_calibration(
    train_scores: np.ndarray, train_labels: np.ndarray, content_free_scores: np.ndarray, n_classes: int
) -> CalibrationFit:
    """Fit contextual calibration and the class biases, and score both on the train sample."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    content_free = fit_contextual(content_free_scores)
    bias = fit_class_bias(train_scores, train_labels, n_classes)
    return CalibrationFit(
        content_free_probabilities=content_free,
        class_bias=bias,
        train_macro_f1_raw=_macro_f1(train_labels, _predict(train_scores), n_classes),
        train_macro_f1_contextual=_macro_f1(train_labels, apply_contextual(train_scores, content_free)[1], n_classes),
        train_macro_f1_threshold=_macro_f1(train_labels, apply_class_bias(train_scores, bias)[1], n_classes),
    )


def apply_calibration(scores: np.ndarray, fit: CalibrationFit, calibration: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and predictions of one calibration (raw, contextual or threshold) on any scores."""
    if calibration == RAW:
        return choice_probabilities(scores), _predict(scores)
    if calibration == CONTEXTUAL:
        return apply_contextual(scores, fit.content_free_probabilities)
    if calibration == THRESHOLD:
        return apply_class_bias(scores, fit.class_bias)
    raise ValueError(f"calibration {calibration!r} is unknown; use one of {', '.join(CALIBRATIONS)}")


def calibration_sample(examples: pd.DataFrame, dataset: DatasetSpec, settings: CalibrationSettings) -> pd.DataFrame:
    """Draw the stratified train-split rows that the threshold is fit on, with settings.seed.

    examples is the dataset asset's table. Only rows of the train split are looked at, so
    evaluation rows (their labels included) cannot change the draw.

    NOTE: a train sentence whose text also appears in the evaluation split (CoLA has 16) can be
    drawn, because excluding them would mean reading the evaluation split.
    """
    train = examples[examples["split"] == dataset.train_split].sort_values("idx").reset_index(drop=True)
    if train.empty:
        raise CalibrationError(
            f"dataset {dataset.id!r} has no rows in train split {dataset.train_split!r}; calibration is fit on train "
            "rows only, so set train_split or turn prompting.calibration off"
        )
    positions = stratified_sample(train["label"].to_numpy(), settings.train_examples, settings.seed)
    return train.iloc[positions].reset_index(drop=True)


def content_free_examples(dataset: DatasetSpec, settings: CalibrationSettings) -> pd.DataFrame:
    """Build one pseudo-example per content-free input: the input in every text field, idx -1, -2, ...

    The label is 0 only because templates need one to render; the fit never reads it.
    """
    rows = []
    for position, text in enumerate(settings.content_free_inputs):
        row: dict[str, object] = {field: text for field in dataset.text_fields}
        row.update({"dataset": dataset.id, "split": CONTENT_FREE, "idx": -(position + 1), "label": 0,
                    "label_name": dataset.label_names[0]})
        row.update({field: "" for field in dataset.metadata_fields})
        rows.append(row)
    return pd.DataFrame(rows)
