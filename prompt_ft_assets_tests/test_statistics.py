"""Statistics checked against values worked out by hand on small fixed inputs."""

from math import comb

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from prompt_ft_assets.metrics import classification_metrics
from prompt_ft_assets.parsing import INVALID_LABEL
from prompt_ft_assets.statistics import (
    bootstrap_mean_interval,
    fit_prompted_f1_model,
    mcnemar_exact,
    paired_bootstrap_f1_difference,
    resampled_macro_f1,
)


def _paired_vectors(b: int, c: int, both_right: int = 3, both_wrong: int = 2):
    """Labels and two prediction vectors with b examples only A gets right and c only B gets right."""
    y_true = np.zeros(b + c + both_right + both_wrong, dtype=int)
    pred_a = np.concatenate([np.zeros(b), np.ones(c), np.zeros(both_right), np.ones(both_wrong)]).astype(int)
    pred_b = np.concatenate([np.ones(b), np.zeros(c), np.zeros(both_right), np.ones(both_wrong)]).astype(int)
    return y_true, pred_a, pred_b


def test_bootstrap_interval_of_constant_is_exact():
    interval = bootstrap_mean_interval([0.42] * 7, seed=3)
    assert interval.estimate == 0.42
    assert interval.low == 0.42
    assert interval.high == 0.42
    assert interval.n == 7


def test_bootstrap_interval_of_two_values():
    # A resample of [0, 1] has mean 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the 2.5th
    # and 97.5th percentiles of many resamples are 0 and 1.
    interval = bootstrap_mean_interval([0.0, 1.0], seed=0, resamples=10_000)
    assert interval.estimate == 0.5
    assert interval.low == 0.0
    assert interval.high == 1.0


def test_bootstrap_interval_is_seeded():
    values = [0.61, 0.55, 0.70, 0.58, 0.66]
    # Few resamples, so that two seeds give visibly different percentiles.
    first = bootstrap_mean_interval(values, seed=11, resamples=40)
    again = bootstrap_mean_interval(values, seed=11, resamples=40)
    other = bootstrap_mean_interval(values, seed=12, resamples=40)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)
    assert min(values) <= first.low <= first.estimate <= first.high <= max(values)


@pytest.mark.parametrize(
    "values, message",
    [([], "zero values"), ([0.5, float("nan")], "NaN"), ([0.5], "confidence level")],
)
def test_bootstrap_interval_rejects_bad_input(values, message):
    level = 1.5 if message == "confidence level" else 0.95
    with pytest.raises(ValueError, match=message):
        bootstrap_mean_interval(values, level=level)


@pytest.mark.parametrize(
    "b, c, expected",
    [
        (1, 6, 2 * (comb(7, 0) + comb(7, 1)) / 2**7),
        (6, 1, 2 * (comb(7, 0) + comb(7, 1)) / 2**7),
        (0, 3, 2 * comb(3, 0) / 2**3),
        (2, 2, 1.0),
        (0, 0, 1.0),
        (0, 10, 2 / 2**10),
    ],
)
def test_mcnemar_exact_hand_values(b, c, expected):
    y_true, pred_a, pred_b = _paired_vectors(b, c)
    result = mcnemar_exact(y_true, pred_a, pred_b)
    assert result.b == b
    assert result.c == c
    assert result.statistic == min(b, c)
    assert result.p_value == pytest.approx(expected)
    assert result.n == len(y_true)


def test_mcnemar_b1_c6_is_0125():
    result = mcnemar_exact(*_paired_vectors(1, 6))
    assert result.p_value == pytest.approx(0.125)


def test_mcnemar_matches_statsmodels():
    y_true, pred_a, pred_b = _paired_vectors(4, 11, both_right=20, both_wrong=5)
    ours = mcnemar_exact(y_true, pred_a, pred_b)
    theirs = mcnemar([[20, 4], [11, 5]], exact=True)
    assert ours.statistic == theirs.statistic
    assert ours.p_value == pytest.approx(theirs.pvalue)


def test_mcnemar_counts_invalid_as_wrong():
    y_true = [0, 1, 1, 0]
    pred_a = [0, 1, 1, 0]
    pred_b = [INVALID_LABEL, INVALID_LABEL, 1, 0]
    result = mcnemar_exact(y_true, pred_a, pred_b)
    assert (result.b, result.c) == (2, 0)


def test_mcnemar_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([0, 1], [0, 1], [0])


def test_resampled_f1_matches_metrics_module():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 3, 40)
    y_pred = np.where(rng.random(40) < 0.1, INVALID_LABEL, rng.integers(0, 3, 40))
    indices = rng.integers(0, 40, size=(25, 40))
    fast = resampled_macro_f1(y_true, y_pred, 3, indices)
    for row, index in zip(fast, indices):
        assert row == pytest.approx(classification_metrics(y_true[index], y_pred[index], 3).macro_f1)


def test_paired_bootstrap_difference_is_observed_f1_gap():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 60)
    pred_a = np.where(rng.random(60) < 0.8, y_true, 1 - y_true)
    pred_b = np.where(rng.random(60) < 0.6, y_true, 1 - y_true)
    result = paired_bootstrap_f1_difference(y_true, pred_a, pred_b, n_classes=2, seed=0, resamples=500)
    expected = classification_metrics(y_true, pred_a, 2).macro_f1 - classification_metrics(y_true, pred_b, 2).macro_f1
    assert result.difference == pytest.approx(expected)
    assert result.low <= result.difference <= result.high
    assert 2 / 501 <= result.p_value <= 1.0
    assert result.n == 60
    assert result.resamples == 500


def test_paired_bootstrap_identical_predictions():
    y_true = [0, 1, 1, 0, 1, 0]
    pred = [0, 1, 0, 0, 1, 1]
    result = paired_bootstrap_f1_difference(y_true, pred, pred, n_classes=2, seed=1, resamples=200)
    assert result.difference == 0.0
    assert result.low == 0.0
    assert result.high == 0.0
    assert result.p_value == 1.0


def test_paired_bootstrap_clear_gap_is_significant():
    y_true = np.tile([0, 1], 50)
    perfect = y_true.copy()
    one_class = np.zeros_like(y_true)
    result = paired_bootstrap_f1_difference(y_true, perfect, one_class, n_classes=2, seed=0, resamples=1000)
    # F1 of a perfect run is 1; predicting class 0 everywhere gives F1 (2/3 + 0) / 2 = 1/3.
    assert result.difference == pytest.approx(2 / 3)
    assert result.low > 0.5
    assert result.p_value == pytest.approx(2 / 1001)


def test_paired_bootstrap_p_agrees_with_interval():
    # Four examples: the interval of the difference is wide, so the p-value must not be small.
    y_true = [0, 1, 1, 0]
    result = paired_bootstrap_f1_difference(y_true, [0, 0, 0, 0], [0, 1, 1, 0], n_classes=2, seed=0, resamples=2000)
    assert result.low <= 0.0 <= result.high
    assert result.p_value > 0.05


@pytest.mark.parametrize("seed", range(5))
def test_paired_bootstrap_p_counts_sides_of_zero(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 30)
    pred_a = np.where(rng.random(30) < 0.75, y_true, 1 - y_true)
    pred_b = np.where(rng.random(30) < 0.65, y_true, 1 - y_true)
    result = paired_bootstrap_f1_difference(y_true, pred_a, pred_b, 2, seed=seed, resamples=400)
    indices = np.random.default_rng(seed).integers(0, 30, size=(400, 30))
    differences = resampled_macro_f1(y_true, pred_a, 2, indices) - resampled_macro_f1(y_true, pred_b, 2, indices)
    smaller_side = min((differences <= 0).sum(), (differences >= 0).sum())
    assert result.p_value == pytest.approx(min(1.0, 2 * (1 + smaller_side) / 401))
    if result.p_value < 0.05:
        assert not result.low <= 0.0 <= result.high


def test_paired_bootstrap_is_seeded():
    y_true, pred_a, pred_b = _paired_vectors(3, 5)
    first = paired_bootstrap_f1_difference(y_true, pred_a, pred_b, 2, seed=7, resamples=300)
    again = paired_bootstrap_f1_difference(y_true, pred_a, pred_b, 2, seed=7, resamples=300)
    assert first == again


def _runs(rows):
    columns = ["macro_f1", "params_b", "family", "generation", "is_moe", "template"]
    return pd.DataFrame(rows, columns=columns)


def test_ols_matches_lstsq_on_tiny_design():
    frame = _runs(
        [
            (0.50, 0.5, "a", "1", False, "t1"),
            (0.55, 0.5, "a", "1", False, "t2"),
            (0.60, 1.0, "a", "1", False, "t1"),
            (0.70, 1.0, "a", "1", False, "t2"),
            (0.62, 2.0, "a", "1", False, "t1"),
            (0.71, 2.0, "a", "1", False, "t2"),
        ]
    )
    fit = fit_prompted_f1_model(frame)
    design = np.column_stack([np.ones(6), np.log(frame["params_b"]), (frame["template"] == "t2").astype(float)])
    expected, *_ = np.linalg.lstsq(design, frame["macro_f1"].to_numpy(), rcond=None)
    coefficients = fit.table.set_index("term")["coef"]
    assert coefficients["Intercept"] == pytest.approx(expected[0])
    assert coefficients["log_params_b"] == pytest.approx(expected[1])
    assert coefficients["C(template)[T.t2]"] == pytest.approx(expected[2])
    assert fit.n_obs == 6
    assert fit.residual_df == 3


def test_ols_drops_single_level_factors():
    frame = _runs(
        [
            (0.50, 0.5, "a", "1", False, "t1"),
            (0.55, 0.5, "a", "1", False, "t2"),
            (0.60, 0.5, "a", "1", False, "t1"),
            (0.65, 0.5, "a", "1", False, "t2"),
        ]
    )
    fit = fit_prompted_f1_model(frame)
    assert set(fit.dropped) == {"log_params_b", "family", "generation", "is_moe"}
    assert fit.dropped["log_params_b"] == "single level (0.5)"
    assert fit.dropped["is_moe"] == "single level (False)"
    assert fit.formula == "macro_f1 ~ C(template)"
    coefficients = fit.table.set_index("term")["coef"]
    assert coefficients["Intercept"] == pytest.approx(0.55)
    assert coefficients["C(template)[T.t2]"] == pytest.approx(0.05)


def test_ols_drops_aliased_factors():
    # Two models: size, family and generation all split the runs the same way.
    frame = _runs(
        [
            (0.40, 0.135, "smollm2", "2", False, "t1"),
            (0.45, 0.135, "smollm2", "2", False, "t2"),
            (0.42, 0.135, "smollm2", "2", False, "t1"),
            (0.55, 0.27, "gemma", "3", False, "t1"),
            (0.50, 0.27, "gemma", "3", False, "t2"),
            (0.52, 0.27, "gemma", "3", False, "t2"),
        ]
    )
    fit = fit_prompted_f1_model(frame)
    assert fit.formula == "macro_f1 ~ log_params_b + C(template)"
    assert fit.dropped["family"] == "aliased with log_params_b"
    assert fit.dropped["generation"] == "aliased with log_params_b"
    assert fit.dropped["is_moe"].startswith("single level")
    assert list(fit.table.columns) == ["term", "coef", "std_err", "t", "p_value", "ci_low", "ci_high"]


def test_ols_one_run_fits_intercept_only():
    fit = fit_prompted_f1_model(_runs([(0.5, 0.135, "smollm2", "2", False, "t1")]))
    assert fit.formula == "macro_f1 ~ 1"
    assert fit.table["coef"].tolist() == [pytest.approx(0.5)]
    assert np.isnan(fit.table["std_err"].iloc[0])
    assert fit.residual_df == 0


def test_ols_rejects_missing_columns():
    with pytest.raises(ValueError, match="lack columns"):
        fit_prompted_f1_model(pd.DataFrame({"macro_f1": [0.5]}))


def test_ols_rejects_empty_runs():
    with pytest.raises(ValueError, match="zero prompted runs"):
        fit_prompted_f1_model(_runs([]))
