"""Planning of hyperparameter selection runs before the finetune runs that read their choice."""

import yaml
from dagster import DagsterInstance

from prompt_ft_assets.missing_runs import plan_missing_runs
from prompt_ft_assets.partitions import finetune_selection_partition_keys, sync_partitions
from prompt_ft_assets.spec import load_spec

from .study_specs import MINILM, REGISTRY_ENTRIES, record_materializations


def _spec(tmp_path, grid):
    finetune = {"seeds": [0, 1], "train_sizes": [64, None]}
    if grid:
        finetune["grid"] = grid
    data = {
        "name": "selection",
        "datasets": [REGISTRY_ENTRIES["glue_cola"]],
        "prompt_models": [],
        "encoders": [MINILM],
        "finetune": finetune,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


def _planned(instance, spec, job: str) -> list[str]:
    return sorted(run.partition_key for run in plan_missing_runs(instance, spec) if run.job_name == job)


def test_grid_finetunes_wait_for_selection(tmp_path):
    spec = _spec(tmp_path, {"learning_rate": [5e-5, 1e-4]})
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, spec)
    record_materializations(instance, "prompt_templates", ["glue_cola"])

    assert _planned(instance, spec, "selection_job") == [
        "glue_cola|minilm-l6__n64", "glue_cola|minilm-l6__nall",
    ]
    assert _planned(instance, spec, "finetune_job") == []

    record_materializations(instance, "finetune_selection", ["glue_cola|minilm-l6__n64"])
    assert _planned(instance, spec, "selection_job") == ["glue_cola|minilm-l6__nall"]
    assert _planned(instance, spec, "finetune_job") == [
        "glue_cola|minilm-l6__n64__s0", "glue_cola|minilm-l6__n64__s1",
    ]


def test_no_grid_plans_no_selection(tmp_path):
    spec = _spec(tmp_path, None)
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, spec)
    record_materializations(instance, "prompt_templates", ["glue_cola"])

    assert finetune_selection_partition_keys(spec) == []
    assert _planned(instance, spec, "selection_job") == []
    assert len(_planned(instance, spec, "finetune_job")) == 4
