"""Plan the runs that bring an experiment up to date: missing partitions, stage by stage.

A stage is planned only when its inputs exist: prompted and finetune partitions of a dataset wait
for that dataset's data run, votes wait for all of the dataset's prompted partitions, and the
analysis waits until nothing upstream is planned. Materialized partitions are never planned again.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from .partitions import finetune_partition_keys, prompted_partition_keys
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

    prompted_done = materialized_partitions(instance, "prompt_run_metrics")
    prompted_by_dataset: dict[str, list[str]] = {}
    for key in prompted_partition_keys(spec):
        dataset_id = key.keys_by_dimension["dataset"]
        prompted_by_dataset.setdefault(dataset_id, []).append(str(key))
        if dataset_id in ready and str(key) not in prompted_done:
            planned.append(PlannedRun("prompted_job", str(key), "prompted partition not materialized"))

    finetune_done = materialized_partitions(instance, "finetune_metrics")
    for key in finetune_partition_keys(spec):
        if key.keys_by_dimension["dataset"] in ready and str(key) not in finetune_done:
            planned.append(PlannedRun("finetune_job", str(key), "finetune partition not materialized"))

    for dataset_id in ready:
        keys = prompted_by_dataset.get(dataset_id, [])
        if not keys or any(key not in prompted_done for key in keys):
            continue
        newest_metrics = _latest_storage_id(instance, "prompt_run_metrics", keys)
        if _latest_storage_id(instance, "vote_aggregates", [dataset_id]) < newest_metrics:
            planned.append(PlannedRun("votes_job", dataset_id, "prompted runs newer than the votes", newest_metrics))

    if not planned:
        newest_input = max(
            _latest_storage_id(instance, asset) for asset in ("prompt_run_metrics", "vote_aggregates", "finetune_metrics")
        )
        if newest_input and _latest_storage_id(instance, "summary_tables") < newest_input:
            planned.append(PlannedRun("analysis_job", None, "results newer than the summary tables", newest_input))
    return planned
