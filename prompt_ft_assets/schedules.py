"""Nightly backfills: request every partition that is missing or whose last run failed.

A Dagster schedule targets one job, and the study's stages are separate jobs because their assets
have different partitions, so there is one schedule per stage, each off until switched on in the
UI. Each requests only the runs of its stage whose inputs exist, so a partition whose upstream
failed waits for the next night.
"""

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from .jobs import STUDY_JOBS
from .missing_runs import plan_missing_runs
from .partitions import sync_partitions
from .resources import ExperimentResource

NIGHTLY_CRON = "0 2 * * *"


def nightly_backfill_schedule(job) -> ScheduleDefinition:
    stage = job.name.removesuffix("_job")

    @schedule(
        name=f"nightly_backfill_{stage}",
        cron_schedule=NIGHTLY_CRON,
        job=job,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Nightly at 02:00: requests each {stage} partition of the experiment that is missing or failed.",
    )
    def _schedule(context: ScheduleEvaluationContext, experiment: ExperimentResource):
        spec = experiment.load()
        sync_partitions(context.instance, spec)
        planned = [run for run in plan_missing_runs(context.instance, spec) if run.job_name == job.name]
        if not planned:
            return SkipReason(f"no {stage} partition is missing or failed")
        # The tick time in the run key lets a failed partition be retried on the next night.
        tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "manual"
        return [
            RunRequest(run_key=f"{run.run_key}:{tick}", partition_key=run.partition_key, tags={"prompt_ft/reason": run.reason})
            for run in planned
        ]

    return _schedule


NIGHTLY_BACKFILLS = [nightly_backfill_schedule(job) for job in STUDY_JOBS]
