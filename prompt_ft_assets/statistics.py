"""Statistics for the report: bootstrap intervals, paired tests and a regression of prompted F1.

Every function is pure and seeded: the same inputs and seed give the same numbers. Predictions are
class indices, and INVALID_LABEL (-1) counts as a wrong prediction, as in metrics.py.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy.stats import binom

from .parsing import INVALID_LABEL

CONFIDENCE_LEVEL = 0.95
MEAN_RESAMPLES = 10_000
PAIRED_RESAMPLES = 2_000

# Regression terms of prompted macro F1, in the order they enter the design. A term whose columns
# are linear combinations of earlier ones is left out, so earlier terms win a tie.
OLS_RESPONSE = "macro_f1"
OLS_TERMS: tuple[tuple[str, str], ...] = (
    ("log_params_b", "log_params_b"),
    ("family", "C(family)"),
    ("generation", "C(generation)"),
    ("is_moe", "C(is_moe)"),
    ("template", "C(template)"),
)
OLS_COLUMNS = ("macro_f1", "params_b", "family", "generation", "is_moe", "template")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = CONFIDENCE_LEVEL


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on paired correctness.

    b counts examples A gets right and B gets wrong, c the reverse. The statistic is min(b, c),
    the tail the exact binomial test sums.
    """

    b: int
    c: int
    statistic: int
    p_value: float
    n: int


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Macro F1 of A minus macro F1 of B on the same examples, with a paired bootstrap interval."""

    difference: float
    low: float
    high: float
    p_value: float
    n: int
    resamples: int
    level: float = CONFIDENCE_LEVEL


@dataclass(frozen=True)
class OlsFit:
    """An OLS fit of prompted macro F1: the coefficient table and the terms left out, with why."""

    formula: str
    table: pd.DataFrame
    dropped: dict[str, str] = field(default_factory=dict)
    n_obs: int = 0
    residual_df: float = 0.0
    r_squared: float = float("nan")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level} is invalid: use a value between 0 and 1, for example 0.95")


def _check_resamples(resamples: int) -> None:
    if resamples < 1:
        raise ValueError(f"resamples {resamples} is invalid: use at least 1 (the report uses {PAIRED_RESAMPLES})")


def bootstrap_mean_interval(
    values, seed: int = 0, resamples: int = MEAN_RESAMPLES, level: float = CONFIDENCE_LEVEL
) -> Interval:
    """Compute the mean and its percentile bootstrap interval, resampling values with a fixed seed."""
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("cannot bootstrap the mean of zero values; pass at least one value")
    if np.isnan(array).any():
        raise ValueError(f"values contain NaN at positions {np.flatnonzero(np.isnan(array)).tolist()}; drop them first")
    _check_level(level)
    _check_resamples(resamples)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, array.size, size=(resamples, array.size))
    means = array[index].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.percentile(means, [100 * tail, 100 * (1 - tail)])
    return Interval(float(array.mean()), float(low), float(high), int(array.size), level)


def _paired_arrays(y_true, pred_a, pred_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    pred_a = np.asarray(pred_a, dtype=np.int64).ravel()
    pred_b = np.asarray(pred_b, dtype=np.int64).ravel()
    if not y_true.size == pred_a.size == pred_b.size:
        raise ValueError(
            f"paired inputs differ in length: y_true {y_true.size}, pred_a {pred_a.size}, pred_b {pred_b.size}; "
            "align both prediction vectors on the same examples first"
        )
    if y_true.size == 0:
        raise ValueError("cannot compare predictions on zero examples")
    return y_true, pred_a, pred_b


def mcnemar_exact(y_true, pred_a, pred_b) -> McNemarResult:
    """Run McNemar's exact test: a two-sided binomial test with p = 1/2 on the discordant pairs."""
    y_true, pred_a, pred_b = _paired_arrays(y_true, pred_a, pred_b)
    correct_a = pred_a == y_true
    correct_b = pred_b == y_true
    b = int((correct_a & ~correct_b).sum())
    c = int((~correct_a & correct_b).sum())
    statistic = min(b, c)
    # With no discordant pair the two systems agree on every example's correctness.
    p_value = 1.0 if b + c == 0 else min(1.0, 2.0 * float(binom.cdf(statistic, b + c, 0.5)))
    return McNemarResult(b=b, c=c, statistic=statistic, p_value=p_value, n=int(y_true.size))


def resampled_macro_f1(y_true, y_pred, n_classes: int, indices: np.ndarray) -> np.ndarray:
    """Compute the macro F1 of each resample, one per row of an (resamples, n) index array.

    The counts of each resample are weights times per-example indicators, so one matrix product
    replaces a loop over resamples. The definition matches metrics.classification_metrics: an
    invalid prediction is a false negative for its true class and a false positive for none.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    n = y_true.size
    weights = np.zeros((indices.shape[0], n), dtype=np.float64)
    rows = np.repeat(np.arange(indices.shape[0]), indices.shape[1])
    np.add.at(weights, (rows, indices.ravel()), 1.0)
    classes = np.arange(n_classes)
    is_true = (y_true[:, None] == classes[None, :]).astype(np.float64)
    is_pred = ((y_pred[:, None] == classes[None, :]) & (y_pred[:, None] != INVALID_LABEL)).astype(np.float64)
    true_positive = weights @ (is_true * is_pred)
    predicted = weights @ is_pred
    actual = weights @ is_true
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f1.mean(axis=1)


def paired_bootstrap_f1_difference(
    y_true, pred_a, pred_b, n_classes: int, seed: int = 0,
    resamples: int = PAIRED_RESAMPLES, level: float = CONFIDENCE_LEVEL,
) -> PairedBootstrapResult:
    """Bootstrap macro F1(A) - F1(B), resampling examples jointly so each resample keeps the pairs.

    The interval is the percentile interval. The two-sided p-value is twice the smaller share of
    bootstrap differences on either side of zero, with add-one smoothing so it is never exactly
    0. It inverts the percentile interval, so p < 1 - level exactly when the interval excludes 0
    (up to the smoothing), and the page never shows a small p-value beside an interval that
    contains 0.
    """
    y_true, pred_a, pred_b = _paired_arrays(y_true, pred_a, pred_b)
    _check_level(level)
    _check_resamples(resamples)
    identity = np.arange(y_true.size)[None, :]
    observed = float(
        resampled_macro_f1(y_true, pred_a, n_classes, identity)[0] - resampled_macro_f1(y_true, pred_b, n_classes, identity)[0]
    )
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, y_true.size, size=(resamples, y_true.size))
    differences = resampled_macro_f1(y_true, pred_a, n_classes, indices) - resampled_macro_f1(y_true, pred_b, n_classes, indices)
    tail = (1.0 - level) / 2.0
    low, high = np.percentile(differences, [100 * tail, 100 * (1 - tail)])
    at_or_below = int((differences <= 0).sum())
    at_or_above = int((differences >= 0).sum())
    p_value = min(1.0, 2.0 * (1 + min(at_or_below, at_or_above)) / (resamples + 1))
    return PairedBootstrapResult(observed, float(low), float(high), p_value, int(y_true.size), resamples, level)


def _design_rank(formula: str, frame: pd.DataFrame) -> tuple[int, int]:
    exog = smf.ols(formula, frame).exog
    return int(np.linalg.matrix_rank(exog)), int(exog.shape[1])


def fit_prompted_f1_model(run_metrics: pd.DataFrame) -> OlsFit:
    """Fit OLS of macro F1 on log(params_b), family, generation, is_moe and template, one row per run.

    A term with a single level (one model size, one family, ...) is dropped. So is a term whose
    columns are linear combinations of earlier terms, because its coefficient would not be
    identifiable. With two models, for example, size, family and generation split the runs alike.
    """
    missing = [column for column in OLS_COLUMNS if column not in run_metrics.columns]
    if missing:
        raise ValueError(f"run metrics lack columns {missing}; pass rows of the prompt_run_metrics table")
    frame = run_metrics[list(OLS_COLUMNS)].dropna().copy()
    if frame.empty:
        raise ValueError("cannot fit the F1 model on zero prompted runs; materialize prompt_run_metrics first")
    if (frame["params_b"] <= 0).any():
        raise ValueError(f"params_b must be positive to take its log, got {sorted(frame['params_b'].unique())}")
    frame["log_params_b"] = np.log(frame["params_b"].astype(float))
    frame["is_moe"] = frame["is_moe"].astype(bool)
    for column in ("family", "generation", "template"):
        frame[column] = frame[column].astype(str)

    kept: list[str] = []
    dropped: dict[str, str] = {}
    for name, term in OLS_TERMS:
        levels = frame[name].nunique()
        if levels < 2:
            shown = "params_b" if name == "log_params_b" else name
            dropped[name] = f"single level ({frame[shown].tolist()[0]!r})"
            continue
        candidate = f"{OLS_RESPONSE} ~ " + " + ".join([*kept, term])
        rank, columns = _design_rank(candidate, frame)
        if rank < columns:
            earlier = [label for label, t in OLS_TERMS if t in kept]
            dropped[name] = f"aliased with {', '.join(earlier) or 'the intercept'}"
            continue
        kept.append(term)
    formula = f"{OLS_RESPONSE} ~ " + (" + ".join(kept) if kept else "1")
    with warnings.catch_warnings():
        # Zero residual degrees of freedom give NaN standard errors; the table shows them as such.
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted = smf.ols(formula, frame).fit()
        interval = fitted.conf_int(alpha=1 - CONFIDENCE_LEVEL)
        table = pd.DataFrame(
            {
                "term": fitted.params.index,
                "coef": fitted.params.to_numpy(),
                "std_err": fitted.bse.to_numpy(),
                "t": fitted.tvalues.to_numpy(),
                "p_value": fitted.pvalues.to_numpy(),
                "ci_low": interval[0].to_numpy(),
                "ci_high": interval[1].to_numpy(),
            }
        )
        r_squared = float(fitted.rsquared) if kept else float("nan")
    return OlsFit(
        formula=formula, table=table, dropped=dropped, n_obs=int(fitted.nobs),
        residual_df=float(fitted.df_resid), r_squared=r_squared,
    )
