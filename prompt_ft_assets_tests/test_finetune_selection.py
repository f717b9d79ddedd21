"""Hyperparameter selection: grid expansion, the choice rule, and that evaluation rows never reach it.

The leakage tests use real CoLA rows and a small nearest-neighbour learner on sentence length in
place of an encoder, so the check is fast and its outcome depends on the labels it is given.
"""

import json

import numpy as np
import pandas as pd
import pytest

from prompt_ft_assets.datasets_io import load_dataset_frame
from prompt_ft_assets.finetune_splits import held_out_examples
from prompt_ft_assets.hyperparameter_search import (
    apply_point,
    choose_point,
    chosen_hyperparameters,
    grid_points,
    select_hyperparameters,
)
from prompt_ft_assets.spec import FinetuneSettings
from prompt_ft_assets_tests.test_finetune_splits import cola_spec

GRID = {"batch_size": [1, 7, 51]}


@pytest.fixture(scope="module")
def cola():
    spec = cola_spec(train_limit=400, eval_limit=200)
    return spec.datasets[0], load_dataset_frame(spec, spec.datasets[0])


def length_neighbour_learner(calls: list):
    """A learner that predicts the majority label of the batch_size training rows nearest in sentence length."""

    def fit_predict(fit: pd.DataFrame, held_out: pd.DataFrame, settings: FinetuneSettings, seed: int) -> np.ndarray:
        calls.append({"fit": fit, "held_out": held_out, "settings": settings, "seed": seed})
        lengths = fit["sentence"].str.len().to_numpy()
        labels = fit["label"].to_numpy()
        predictions = []
        for length in held_out["sentence"].str.len():
            nearest = np.argsort(np.abs(lengths - length), kind="stable")[: settings.batch_size]
            predictions.append(int(np.bincount(labels[nearest], minlength=2).argmax()))
        return np.array(predictions)

    return fit_predict


def test_grid_points_product_in_spec_order():
    points = grid_points({"learning_rate": [5e-5, 1e-4], "num_epochs": [2, 3]})
    assert points == [
        {"learning_rate": 5e-5, "num_epochs": 2},
        {"learning_rate": 5e-5, "num_epochs": 3},
        {"learning_rate": 1e-4, "num_epochs": 2},
        {"learning_rate": 1e-4, "num_epochs": 3},
    ]


def test_grid_points_without_grid():
    assert grid_points(None) == [{}]


def test_apply_point_validates_values():
    settings = apply_point(FinetuneSettings(grid={"learning_rate": [1e-4]}), {"learning_rate": 1e-4, "batch_size": 8})
    assert settings.learning_rate == 1e-4
    assert settings.batch_size == 8
    assert settings.grid is None


@pytest.mark.parametrize(
    "fold_f1, expected",
    [
        ([0.5, 0.7, 0.6, 0.6, 0.4, 0.4], 0),  # means 0.6, 0.6, 0.4: a tie goes to the first point
        ([0.5, 0.5, 0.6, 0.8, 0.4, 0.4], 1),
        ([0.1, 0.1, 0.2, 0.2, 0.9, 0.3], 2),
    ],
)
def test_choose_point_best_mean(fold_f1, expected):
    scores = pd.DataFrame(
        {
            "point": [0, 0, 1, 1, 2, 2],
            "hyperparameters_json": [json.dumps({"batch_size": b}) for b in (1, 1, 7, 7, 51, 51)],
            "fold": [0, 1] * 3,
            "fold_macro_f1": fold_f1,
        }
    )
    chosen = choose_point(scores)
    assert chosen.loc[chosen["chosen"], "point"].unique().tolist() == [expected]
    assert chosen_hyperparameters(chosen) == {"batch_size": [1, 7, 51][expected]}


def test_selection_sees_train_rows_only(cola):
    config, examples = cola
    calls = []
    settings = FinetuneSettings(grid=GRID, selection_folds=3)
    select_hyperparameters(examples, config, settings, None, length_neighbour_learner(calls))
    assert len(calls) == 3 * 3
    evaluation_idx = set(examples.loc[examples["split"] == "validation", "idx"])
    for call in calls:
        for rows in (call["fit"], call["held_out"]):
            assert set(rows["split"]) == {"train"}
            assert rows["in_sample"].all()
    assert len(evaluation_idx) > 0


def test_selection_ignores_evaluation_labels(cola):
    config, examples = cola
    settings = FinetuneSettings(grid=GRID, selection_folds=3)
    clean = select_hyperparameters(examples, config, settings, None, length_neighbour_learner([]))

    poisoned = examples.copy()
    evaluation = poisoned["split"] == config.eval_split
    poisoned.loc[evaluation, "label"] = 1 - poisoned.loc[evaluation, "label"]
    poisoned.loc[evaluation, "sentence"] = "x"
    after = select_hyperparameters(poisoned, config, settings, None, length_neighbour_learner([]))

    pd.testing.assert_frame_equal(clean, after)
    assert chosen_hyperparameters(clean) == chosen_hyperparameters(after)


def test_selection_depends_on_train_labels(cola):
    """The counterpart of the leakage test: poisoning train labels must change the fold scores."""
    config, examples = cola
    settings = FinetuneSettings(grid=GRID, selection_folds=3)
    clean = select_hyperparameters(examples, config, settings, None, length_neighbour_learner([]))
    poisoned = examples.copy()
    train = poisoned["split"] == config.train_split
    poisoned.loc[train, "label"] = 1 - poisoned.loc[train, "label"]
    after = select_hyperparameters(poisoned, config, settings, None, length_neighbour_learner([]))
    assert not np.allclose(clean["fold_macro_f1"], after["fold_macro_f1"])


def test_selection_excludes_held_out_fold(cola):
    config, examples = cola
    calls = []
    settings = FinetuneSettings(grid=GRID, selection_folds=2, k_fold=4, current_fold=2)
    select_hyperparameters(examples, config, settings, None, length_neighbour_learner(calls))
    held_out = set(held_out_examples(examples, config, settings)["idx"])
    for call in calls:
        assert held_out.isdisjoint(call["fit"]["idx"])
        assert held_out.isdisjoint(call["held_out"]["idx"])


def test_selection_rows_and_train_size(cola):
    config, examples = cola
    calls = []
    settings = FinetuneSettings(grid=GRID, selection_folds=2, selection_seed=4)
    scores = select_hyperparameters(examples, config, settings, 64, length_neighbour_learner(calls))
    assert len(scores) == 3 * 2
    assert scores["fit_examples"].eq(64).all()
    assert scores["held_out_examples"].sum() == len(GRID["batch_size"]) * 400
    assert {call["seed"] for call in calls} == {4, 5}
    assert scores.groupby("point")["chosen"].all().sum() == 1
    assert [call["settings"].batch_size for call in calls] == [1, 1, 7, 7, 51, 51]
