"""Adding datasets to the registry: the sensor requests runs for the new partitions only."""

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, SensorResult, SkipReason, build_sensor_context

from prompt_ft_assets.cli import run_experiment
from prompt_ft_assets.definitions import defs
from prompt_ft_assets.resources import ExperimentResource
from prompt_ft_assets.sensors import study_sensor
from prompt_ft_assets.store import ResultsStore

from .study_specs import write_registry_entry, write_registry_spec

pytestmark = pytest.mark.slow

EVAL_LIMIT = 4
TRAIN_LIMIT = 32
MAX_TICKS = 6


def _tick(instance, spec_path):
    context = build_sensor_context(instance=instance, resources={"experiment": ExperimentResource(spec_path=str(spec_path))})
    return study_sensor(context)


def _apply(instance, result: SensorResult) -> list:
    """Do what the sensor daemon does: add the requested partitions, then execute the runs in process."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    outcomes = []
    for run in result.run_requests or []:
        execution = defs.resolve_job_def(run.job_name).execute_in_process(
            instance=instance, partition_key=run.partition_key, raise_on_error=False
        )
        outcomes.append((run.job_name, run.partition_key, execution.success))
    return outcomes


def _materialization_count(instance, asset: str) -> int:
    return len(instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)), limit=1000).records)


def test_new_datasets_run_without_rerunning_cola(tmp_path, monkeypatch, cola_dir):
    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(tmp_path / "state"))
    registry = tmp_path / "registry"
    write_registry_entry(registry, "glue_cola", EVAL_LIMIT, TRAIN_LIMIT)
    spec_path = write_registry_spec(tmp_path, runs=2, encoder_epochs=1)
    instance = DagsterInstance.ephemeral()
    assert run_experiment(spec_path, instance=instance).failed == []
    store = ResultsStore(tmp_path / "state" / "results")
    cola_files = {path: path.stat().st_mtime_ns for path in store.files("prompt_predictions")}
    cola_prompted_materializations = _materialization_count(instance, "prompt_predictions")
    cola_finetunes = _materialization_count(instance, "finetuned_encoder")
    assert isinstance(_tick(instance, spec_path), SkipReason)

    write_registry_entry(registry, "glue_sst2", EVAL_LIMIT, TRAIN_LIMIT)
    write_registry_entry(registry, "glue_rte", EVAL_LIMIT, TRAIN_LIMIT)
    first = _tick(instance, spec_path)
    assert isinstance(first, SensorResult)
    requested = {(run.job_name, run.partition_key) for run in first.run_requests}
    assert requested == {("data_job", "glue_sst2"), ("data_job", "glue_rte")}
    added = {request.partitions_def_name: set(request.partition_keys) for request in first.dynamic_partitions_requests}
    assert added["datasets"] == {"glue_sst2", "glue_rte"}

    outcomes = _apply(instance, first)
    for _ in range(MAX_TICKS):
        result = _tick(instance, spec_path)
        if isinstance(result, SkipReason):
            break
        for job_name, partition_key, success in _apply(instance, result):
            assert success, f"{job_name} {partition_key} failed"
            assert partition_key is None or "glue_cola" not in partition_key
            outcomes.append((job_name, partition_key, success))
    else:
        pytest.fail(f"the sensor still requested runs after {MAX_TICKS} ticks")

    assert all(success for _, _, success in outcomes)
    # One run per new prompted partition, one finetune per new dataset, no CoLA partition again.
    assert _materialization_count(instance, "prompt_predictions") == cola_prompted_materializations + 2 * 2
    assert _materialization_count(instance, "finetuned_encoder") == cola_finetunes + 2
    for path, mtime in cola_files.items():
        assert path.stat().st_mtime_ns == mtime

    comparison = store.read("summary_comparison", "all")
    assert set(comparison["dataset"]) == {"glue_cola", "glue_sst2", "glue_rte"}
    cross = store.read("summary_cross_dataset", "all")
    assert sorted(cross["dataset"]) == ["glue_cola", "glue_rte", "glue_sst2"]
    rte = store.read_table("prompt_predictions").query("dataset == 'glue_rte'")
    assert len(rte) == EVAL_LIMIT * 2
    assert rte["prompt"].str.contains("imply").all()
