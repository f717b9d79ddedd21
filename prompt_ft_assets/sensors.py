"""The study sensor: registers the spec's partitions and requests runs for the missing ones."""

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from .jobs import STUDY_JOBS
from .missing_runs import plan_missing_runs
from .partitions import wanted_partitions
from .resources import ExperimentResource

SENSOR_INTERVAL_S = 60


@sensor(
    jobs=STUDY_JOBS,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.STOPPED,
    description="Adds partitions for new datasets, models, templates, runs and seeds in the spec, and "
    "requests runs for partitions never materialized. Each partition is requested once: a failed one "
    "is left to the nightly backfill schedule, so it is not retried every minute.",
)
def study_sensor(context: SensorEvaluationContext, experiment: ExperimentResource):
    spec = experiment.load()
    additions = []
    for name, keys in wanted_partitions(spec).items():
        new = [key for key in keys if not context.instance.has_dynamic_partition(name, key)]
        if new:
            additions.append(AddDynamicPartitionsRequest(partitions_def_name=name, partition_keys=new))
    planned = plan_missing_runs(context.instance, spec)
    if not planned and not additions:
        return SkipReason("every partition of the experiment is materialized")
    context.log.info(
        "adding %d partitions, requesting %d runs", sum(len(a.partition_keys) for a in additions), len(planned)
    )
    requests = [
        RunRequest(run_key=run.run_key, job_name=run.job_name, partition_key=run.partition_key,
                   tags={"prompt_ft/reason": run.reason})
        for run in planned
    ]
    return SensorResult(run_requests=requests, dynamic_partitions_requests=additions)
