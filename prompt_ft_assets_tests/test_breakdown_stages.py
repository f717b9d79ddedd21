"""Planning of the statistics, calibration and domain stages from the materializations an instance
records, as the sensor and the nightly schedules use it."""

import yaml
from dagster import DagsterInstance

from prompt_ft_assets.missing_runs import plan_missing_runs
from prompt_ft_assets.partitions import calibration_partition_keys, domain_dataset_ids, finetune_partition_keys, sync_partitions
from prompt_ft_assets.spec import load_spec

from .study_specs import MINILM, REGISTRY_ENTRIES, SMOLLM2, record_materializations

DOMAIN = {"field": "source", "out_of_domain": ["clc95", "c-05", "j_71", "s_97", "swb04", "w_80"]}


def _spec(tmp_path, methods):
    data = {
        "name": "stages",
        "datasets": [{**REGISTRY_ENTRIES["glue_cola"], "domain": DOMAIN}, REGISTRY_ENTRIES["glue_sst2"]],
        "prompt_models": [SMOLLM2],
        "prompting": {"methods": methods, "runs": 1},
        "encoders": [MINILM],
        "finetune": {"seeds": [0]},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_spec(path)


def _planned(instance, spec) -> set[tuple[str, str | None]]:
    return {(run.job_name, run.partition_key) for run in plan_missing_runs(instance, spec)}


def test_domain_datasets_follow_spec(tmp_path):
    assert domain_dataset_ids(_spec(tmp_path, ["score"])) == ["glue_cola"]


def test_stages_planned_in_order(tmp_path):
    spec = _spec(tmp_path, ["generate", "score"])
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, spec)
    assert _planned(instance, spec) == {("data_job", "glue_cola"), ("data_job", "glue_sst2")}

    record_materializations(instance, "prompt_templates", ["glue_cola", "glue_sst2"])
    planned = _planned(instance, spec)
    assert ("statistics_job", "glue_cola") in planned
    assert ("statistics_job", "glue_sst2") in planned
    assert not any(job in ("calibration_job", "domain_job") for job, _ in planned)

    calibration_keys = [str(key) for key in calibration_partition_keys(spec)]
    assert calibration_keys == ["glue_cola|smollm2-135m__editing__score", "glue_sst2|smollm2-135m__review__score"]
    record_materializations(instance, "dataset_statistics", ["glue_cola", "glue_sst2"])
    prompted = sorted(key for job, key in planned if job == "prompted_job")
    assert len(prompted) == 4
    record_materializations(instance, "prompt_run_metrics", prompted)
    planned = _planned(instance, spec)
    assert {key for job, key in planned if job == "calibration_job"} == set(calibration_keys)
    assert not any(job == "domain_job" for job, _ in planned)

    record_materializations(instance, "score_calibration", calibration_keys)
    record_materializations(instance, "finetune_metrics", finetune_partition_keys(spec))
    planned = _planned(instance, spec)
    assert ("domain_job", "glue_cola") in planned
    assert not any(job == "domain_job" and key == "glue_sst2" for job, key in planned)

    record_materializations(instance, "domain_metrics", ["glue_cola"])
    record_materializations(instance, "vote_aggregates", ["glue_cola", "glue_sst2"])
    assert _planned(instance, spec) == {("analysis_job", None)}
