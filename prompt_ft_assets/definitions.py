"""Dagster definitions: wires assets, jobs and resources. No logic lives here."""

from dagster import Definitions

from .assets.aggregation import vote_aggregates
from .assets.analysis import figures, summary_tables
from .assets.breakdowns import dataset_statistics, domain_metrics
from .assets.calibrated import score_calibration
from .assets.contamination import contamination_probe
from .assets.data import dataset, prompt_templates
from .assets.finetuned import finetune_metrics, finetune_selection, finetuned_encoder
from .assets.prompted import prompt_predictions, prompt_run_metrics
from .assets.reporting import report
from .executors import executor_from_environment
from .jobs import STUDY_JOBS
from .resources import ExperimentResource, ResultsStoreResource
from .schedules import NIGHTLY_BACKFILLS
from .sensors import study_sensor

defs = Definitions(
    assets=[
        dataset,
        prompt_templates,
        dataset_statistics,
        prompt_predictions,
        prompt_run_metrics,
        score_calibration,
        contamination_probe,
        vote_aggregates,
        finetune_selection,
        finetuned_encoder,
        finetune_metrics,
        domain_metrics,
        summary_tables,
        figures,
        report,
    ],
    jobs=STUDY_JOBS,
    sensors=[study_sensor],
    schedules=NIGHTLY_BACKFILLS,
    resources={"experiment": ExperimentResource(), "results": ResultsStoreResource()},
    # PROMPT_FT_EXECUTOR picks the executor that deploy/run_config/ configures; unset keeps Dagster's default.
    executor=executor_from_environment(),
)
