"""Training sets for finetuning on real CoLA: pool, held-out fold, train-size subsamples, folds."""

import numpy as np
import pytest

from prompt_ft_assets.datasets_io import load_dataset_frame
from prompt_ft_assets.finetune_splits import (
    TrainSizeError,
    held_out_examples,
    selection_folds,
    stratified_folds,
    subsample,
    train_pool,
    training_examples,
)
from prompt_ft_assets.spec import ExperimentSpec, FinetuneSettings
from prompt_ft_assets_tests.conftest import COLA_DIR

TRAIN_LIMIT = 300
EVAL_LIMIT = 60


def cola_spec(train_limit: int, eval_limit: int) -> ExperimentSpec:
    if not (COLA_DIR / "train.tsv").is_file():
        pytest.fail(f"real CoLA data not found at {COLA_DIR}; set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    dataset = {
        "id": "glue_cola",
        "source": {"local_dir": str(COLA_DIR), "file_columns": ["source", "label", "original_star", "sentence"]},
        "text_fields": ["sentence"],
        "label_names": ["unacceptable", "acceptable"],
        "train_limit": train_limit,
        "eval_limit": eval_limit,
        "promptsource": {"dataset": "glue", "subset": "cola"},
    }
    return ExperimentSpec.model_validate({"name": "splits", "datasets": [dataset]})


@pytest.fixture(scope="module")
def cola():
    spec = cola_spec(TRAIN_LIMIT, EVAL_LIMIT)
    return spec.datasets[0], load_dataset_frame(spec, spec.datasets[0])


@pytest.mark.parametrize("k", [2, 3, 5])
def test_stratified_folds_balanced(k):
    labels = np.array([0] * 31 + [1] * 70)
    folds = stratified_folds(labels, k, seed=0)
    sizes = np.bincount(folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    for label in (0, 1):
        per_fold = np.bincount(folds[labels == label], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1


def test_stratified_folds_seeded():
    labels = np.arange(40) % 2
    assert np.array_equal(stratified_folds(labels, 4, 3), stratified_folds(labels, 4, 3))
    assert not np.array_equal(stratified_folds(labels, 4, 3), stratified_folds(labels, 4, 4))


@pytest.mark.parametrize("k, n", [(1, 10), (5, 3)])
def test_stratified_folds_rejects_bad_k(k, n):
    with pytest.raises(ValueError, match="fold"):
        stratified_folds(np.zeros(n), k, 0)


def test_pool_holds_train_sample_only(cola):
    config, examples = cola
    pool = train_pool(examples, config)
    assert len(pool) == TRAIN_LIMIT
    assert set(pool["split"]) == {"train"}
    assert pool["idx"].is_monotonic_increasing


def test_held_out_fold_disjoint_from_training(cola):
    config, examples = cola
    settings = FinetuneSettings(k_fold=3, current_fold=1)
    train = training_examples(examples, config, settings)
    held_out = held_out_examples(examples, config, settings)
    assert len(train) + len(held_out) == TRAIN_LIMIT
    assert set(train["idx"]).isdisjoint(held_out["idx"])
    assert abs(len(held_out) - TRAIN_LIMIT / 3) <= 1
    assert set(held_out["split"]) == {"train"}


def test_no_held_out_fold_when_k_fold_off(cola):
    config, examples = cola
    settings = FinetuneSettings()
    assert len(training_examples(examples, config, settings)) == TRAIN_LIMIT
    assert held_out_examples(examples, config, settings).empty


def test_held_out_fold_same_for_every_seed(cola):
    config, examples = cola
    settings = FinetuneSettings(k_fold=3, current_fold=0)
    first = training_examples(examples, config, settings, 64, seed=0)
    second = training_examples(examples, config, settings, 64, seed=1)
    held_out = set(held_out_examples(examples, config, settings)["idx"])
    assert held_out.isdisjoint(first["idx"])
    assert held_out.isdisjoint(second["idx"])
    assert set(first["idx"]) != set(second["idx"])


def test_train_size_subsample_stratified(cola):
    config, examples = cola
    pool = train_pool(examples, config)
    sample = training_examples(examples, config, FinetuneSettings(), 64, seed=5)
    assert len(sample) == 64
    assert set(sample["idx"]) <= set(pool["idx"])
    expected_share = pool["label"].mean()
    assert abs(sample["label"].mean() - expected_share) <= 1 / 64 + 1e-9
    again = training_examples(examples, config, FinetuneSettings(), 64, seed=5)
    assert sample["idx"].tolist() == again["idx"].tolist()


def test_train_size_above_pool_rejected(cola):
    config, examples = cola
    with pytest.raises(TrainSizeError, match="train size 301 exceeds the 300"):
        training_examples(examples, config, FinetuneSettings(), 301, seed=0)


def test_subsample_none_keeps_all(cola):
    config, examples = cola
    pool = train_pool(examples, config)
    assert subsample(pool, None, 0) is pool


def test_selection_folds_cover_rows(cola):
    config, examples = cola
    rows = train_pool(examples, config)
    folds = list(selection_folds(rows, 3, None, seed=0))
    assert [fold.fold for fold in folds] == [0, 1, 2]
    held_out = [set(fold.held_out["idx"]) for fold in folds]
    assert set().union(*held_out) == set(rows["idx"])
    for fold in folds:
        assert set(fold.fit["idx"]).isdisjoint(fold.held_out["idx"])
        assert len(fold.fit) + len(fold.held_out) == len(rows)


def test_selection_folds_subsample_fit(cola):
    config, examples = cola
    rows = train_pool(examples, config)
    folds = list(selection_folds(rows, 3, 50, seed=0))
    assert [len(fold.fit) for fold in folds] == [50, 50, 50]
    capped = list(selection_folds(rows, 3, 250, seed=0))
    assert [len(fold.fit) for fold in capped] == [200, 200, 200]
