"""Plan the runs that bring an experiment up to date: missing partitions, stage by stage.

A stage is planned only when its inputs exist: statistics, prompted and finetune partitions and
the contamination probe of a dataset wait for that dataset's data run (finetune runs on a grid also wait for the
hyperparameter selection of their encoder and train size), calibration waits for its score partition, votes wait
for all of the dataset's prompted partitions, the domain breakdown waits for all of the dataset's
prompted, calibration and finetune partitions, and the analysis waits until nothing upstream is
planned. Materialized partitions are never planned again.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, MultiPartitionKey

from .partitions import (
    calibration_partition_keys,
    contamination_dataset_ids,
    domain_dataset_ids,
    finetune_partition_keys,
    finetune_selection_partition_keys,
    parse_finetune_run,
    prompted_partition_keys,
)
from .spec import ExperimentSpec


@dataclass(frozen=True)
class PlannedRun:
    job_name: str
    partition_key: str | None
    reason: str
    # The newest input this run reads, for runs that repeat when their inputs change (votes, analysis).
    input_version: int = 0

    @property
    def run_key(self) -> str:
        return f"{self.job_name}:{self.partition_key}:{self.input_version}"


def materialized_partitions(instance: DagsterInstance, asset: str) -> set[str]:
    return {str(key) for key in instance.get_materialized_partitions(AssetKey(asset))}


def _latest_storage_id(instance: DagsterInstance, asset: str, partitions: list[str] | None = None) -> int:
    """The storage id of the newest materialization of the asset (of any of the partitions), 0 if none."""
    if partitions is not None and not partitions:
        return 0
    result = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=partitions), limit=1, ascending=False
    )
    return result.records[0].storage_id if result.records else 0


def plan_missing_runs(instance: DagsterInstance, spec: ExperimentSpec) -> list[PlannedRun]:
    """The runs that are missing now, in the order they should start."""
    planned: list[PlannedRun] = []
    datasets_done = materialized_partitions(instance, "prompt_templates")
    ready = []
    for dataset in spec.datasets:
        if dataset.id in datasets_done:
            ready.append(dataset.id)
        else:
            planned.append(PlannedRun("data_job", dataset.id, "dataset not materialized"))

    statistics_done = materialized_partitions(instance, "dataset_statistics")
    for dataset_id in ready:
        if dataset_id not in statistics_done:
            planned.append(PlannedRun("statistics_job", dataset_id, "dataset statistics not materialized"))

    prompted_done = materialized_partitions(instance, "prompt_run_metrics")
    prompted_by_dataset: dict[str, list[str]] = {}
    for key in prompted_partition_keys(spec):
        dataset_id = key.keys_by_dimension["dataset"]
        prompted_by_dataset.setdefault(dataset_id, []).append(str(key))
        if dataset_id in ready and str(key) not in prompted_done:
            planned.append(PlannedRun("prompted_job", str(key), "prompted partition not materialized"))

    contamination_done = materialized_partitions(instance, "contamination_probe")
    for dataset_id in contamination_dataset_ids(spec):
        if dataset_id in ready and dataset_id not in contamination_done:
            planned.append(PlannedRun("contamination_job", dataset_id, "contamination probe not materialized"))

    calibration_done = materialized_partitions(instance, "score_calibration")
    calibration_keys = [str(key) for key in calibration_partition_keys(spec)]
    for key in calibration_keys:
        if key in prompted_done and key not in calibration_done:
            planned.append(PlannedRun("calibration_job", key, "score partition not calibrated"))

    # With finetune.grid set, each (encoder, train size) first chooses its hyperparameters, and its
    # finetune runs wait for that choice.
    selection_done = materialized_partitions(instance, "finetune_selection")
    for key in finetune_selection_partition_keys(spec):
        if key.keys_by_dimension["dataset"] in ready and str(key) not in selection_done:
            planned.append(PlannedRun("selection_job", str(key), "hyperparameters not selected"))

    finetune_done = materialized_partitions(instance, "finetune_metrics")
    finetune_by_dataset: dict[str, list[str]] = {}
    for key in finetune_partition_keys(spec):
        dataset_id = key.keys_by_dimension["dataset"]
        finetune_by_dataset.setdefault(dataset_id, []).append(str(key))
        if dataset_id not in ready or str(key) in finetune_done:
            continue
        if spec.finetune.grid:
            selection = parse_finetune_run(key.keys_by_dimension["finetune_run"]).selection.key
            if str(MultiPartitionKey({"dataset": dataset_id, "finetune_selection": selection})) not in selection_done:
                continue
        planned.append(PlannedRun("finetune_job", str(key), "finetune partition not materialized"))

    for dataset_id in (d for d in domain_dataset_ids(spec) if d in ready):
        prompted_keys = prompted_by_dataset.get(dataset_id, [])
        calibrated_keys = [key for key in calibration_keys if key in prompted_keys]
        finetune_keys = finetune_by_dataset.get(dataset_id, [])
        if (any(key not in prompted_done for key in prompted_keys) or any(key not in calibration_done for key in calibrated_keys)
                or any(key not in finetune_done for key in finetune_keys)):
            continue
        newest_input = max(
            _latest_storage_id(instance, "prompt_run_metrics", prompted_keys),
            _latest_storage_id(instance, "score_calibration", calibrated_keys),
            _latest_storage_id(instance, "finetune_metrics", finetune_keys),
        )
        if newest_input and _latest_storage_id(instance, "domain_metrics", [dataset_id]) < newest_input:
            planned.append(PlannedRun("domain_job", dataset_id, "runs newer than the domain breakdown", newest_input))

    for dataset_id in ready:
        keys = prompted_by_dataset.get(dataset_id, [])
        if not keys or any(key not in prompted_done for key in keys):
            continue
        newest_metrics = _latest_storage_id(instance, "prompt_run_metrics", keys)
        if _latest_storage_id(instance, "vote_aggregates", [dataset_id]) < newest_metrics:
            planned.append(PlannedRun("votes_job", dataset_id, "prompted runs newer than the votes", newest_metrics))

    if not planned:
        newest_input = max(
            _latest_storage_id(instance, asset)
            for asset in ("prompt_run_metrics", "vote_aggregates", "finetune_metrics", "dataset_statistics",
                          "score_calibration", "domain_metrics", "contamination_probe")
        )
        if newest_input and _latest_storage_id(instance, "summary_tables") < newest_input:
            planned.append(PlannedRun("analysis_job", None, "results newer than the summary tables", newest_input))
    return planned
