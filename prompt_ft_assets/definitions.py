"""Dagster definitions: wires assets, jobs and resources. No logic lives here."""

from dagster import Definitions

from .assets.aggregation import vote_aggregates
from .assets.analysis import figures, summary_tables
from .assets.data import dataset, prompt_templates
from .assets.finetuned import finetune_metrics, finetuned_encoder
from .assets.prompted import prompt_predictions, prompt_run_metrics
from .jobs import STUDY_JOBS
from .resources import ExperimentResource, ResultsStoreResource

defs = Definitions(
    assets=[
        dataset,
        prompt_templates,
        prompt_predictions,
        prompt_run_metrics,
        vote_aggregates,
        finetuned_encoder,
        finetune_metrics,
        summary_tables,
        figures,
    ],
    jobs=STUDY_JOBS,
    resources={"experiment": ExperimentResource(), "results": ResultsStoreResource()},
)
