import numpy as np
import pytest
from sklearn.metrics import accuracy_score, matthews_corrcoef, precision_recall_fscore_support

from prompt_ft_assets.metrics import (
    classification_metrics,
    degenerate_run_flags,
    format_mean_std,
)
from prompt_ft_assets.parsing import INVALID_LABEL

CASES = {
    "balanced": ([0, 1, 0, 1, 1, 0, 1, 1], [0, 1, 1, 1, 0, 0, 1, 1], 2),
    "one_class_predicted": ([0, 1, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1], 2),
    "with_invalid": ([0, 1, 1, 0, 1, 1, 0], [0, -1, 1, -1, 1, 0, 0], 2),
    "three_classes": ([0, 1, 2, 2, 1, 0, 2, 1], [0, 2, 2, 2, 1, 1, 0, 1], 3),
    "all_invalid": ([0, 1, 1], [-1, -1, -1], 2),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_metrics_match_sklearn(name):
    y_true, y_pred, n_classes = CASES[name]
    ours = classification_metrics(y_true, y_pred, n_classes)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(n_classes)), average="macro", zero_division=0
    )
    assert ours.macro_precision == pytest.approx(precision)
    assert ours.macro_recall == pytest.approx(recall)
    assert ours.macro_f1 == pytest.approx(f1)
    assert ours.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert ours.mcc == pytest.approx(matthews_corrcoef(y_true, y_pred))


def test_invalid_counts_as_wrong():
    result = classification_metrics([0, 1], [INVALID_LABEL, 1], 2)
    assert result.accuracy == 0.5
    assert result.n_invalid == 1
    assert result.invalid_rate == 0.5


def test_metrics_reject_out_of_range_prediction():
    with pytest.raises(ValueError, match="outside 0..1"):
        classification_metrics([0, 1], [0, 2], 2)


def test_metrics_reject_empty_input():
    with pytest.raises(ValueError, match="zero examples"):
        classification_metrics([], [], 2)


def test_flags_one_class_run():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 2, 200)
    flags = degenerate_run_flags(y_true, np.ones(200, dtype=int), 2)
    assert flags.one_class
    assert flags.near_chance
    assert not flags.high_invalid


def test_flags_near_chance_run():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 2, 300)
    y_pred = rng.integers(0, 2, 300)  # independent of the truth
    flags = degenerate_run_flags(y_true, y_pred, 2)
    assert not flags.one_class
    assert flags.near_chance
    assert flags.mcc_ci_low < 0 < flags.mcc_ci_high


def test_flags_inverted_run_below_chance():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 2, 300)
    y_pred = np.where(rng.random(300) < 0.8, 1 - y_true, y_true)  # mostly the wrong class
    flags = degenerate_run_flags(y_true, y_pred, 2)
    assert flags.below_chance
    assert not flags.near_chance
    assert flags.mcc_ci_high < 0
    assert flags.labels == "below_chance"
    assert flags.columns()["flag_below_chance"] is True


def test_flags_good_run_unflagged():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, 300)
    y_pred = np.where(rng.random(300) < 0.85, y_true, 1 - y_true)
    flags = degenerate_run_flags(y_true, y_pred, 2)
    assert flags.labels == ""


def test_flags_high_invalid_run():
    y_true = np.array([0, 1] * 50)
    y_pred = y_true.copy()
    y_pred[:20] = INVALID_LABEL
    assert degenerate_run_flags(y_true, y_pred, 2).high_invalid


def test_format_mean_std():
    assert format_mean_std([0.8, 0.81, 0.79]) == "0.8000 +- 0.0100"
    assert format_mean_std([0.5]) == "0.5000 +- 0.0000"
