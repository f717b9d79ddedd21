"""Vote aggregation: majority votes over every combination of k runs of a (model, template, shots,
temperature, answer format)."""


from dataclasses import fields

import pandas as pd
from dagster import AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, MultiToSingleDimensionPartitionMapping, asset

from ..answer_formats import DEFAULT_ANSWER_FORMAT
from ..metrics import ClassificationMetrics, classification_metrics
from ..partitions import DATASET_PARTITIONS
from ..previews import markdown_preview
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from ..voting import majority_vote, run_combinations, vote_sizes
from .prompted import PREDICTIONS_TABLE, predictions_matrix, prompt_predictions

VOTE_METRICS_TABLE = "vote_metrics"
# Runs vote together only when all of these match, so runs of different temperatures or answer formats never mix.
VOTE_GROUP_COLUMNS = ["model", "template", "method", "shots", "temperature", "temperature_is_default", "answer_format"]
VOTE_COLUMNS = [
    "dataset", *VOTE_GROUP_COLUMNS, "n_runs", "k", "runs", *(f.name for f in fields(ClassificationMetrics))
]
# Columns added to prompt_predictions after its first version, read with these values from older files.
_STORED_DEFAULTS = {
    "shots": "0",
    "temperature_is_default": "true",
    "answer_format": f"CASE WHEN method = 'generate' THEN '{DEFAULT_ANSWER_FORMAT}' END",
}


def vote_metrics_rows(frame: pd.DataFrame, n_classes: int) -> list[dict[str, object]]:
    """Metrics of the majority vote of each combination of k runs, for each k in 2..n-1."""
    run_ids, predictions, labels = predictions_matrix(frame)
    position = {run: i for i, run in enumerate(run_ids)}
    rows = []
    for k in vote_sizes(len(run_ids)):
        for combination in run_combinations(run_ids, k):
            voted = majority_vote(predictions[[position[run] for run in combination]], n_classes)
            metrics = classification_metrics(labels, voted, n_classes)
            rows.append({"k": k, "runs": ",".join(map(str, combination)), **metrics.as_dict()})
    return rows


def configuration_vote_rows(predictions: pd.DataFrame, dataset_id: str, n_classes: int) -> list[dict[str, object]]:
    """Compute the vote rows of every configuration (VOTE_GROUP_COLUMNS) in a dataset's prompted predictions."""
    rows = []
    if predictions.empty:
        return rows
    # dropna=False keeps label-scoring rows, whose answer_format is empty.
    for values, group in predictions.groupby(VOTE_GROUP_COLUMNS, dropna=False):
        columns = dict(zip(VOTE_GROUP_COLUMNS, values))
        columns["shots"] = int(columns["shots"])
        columns["answer_format"] = None if pd.isna(columns["answer_format"]) else columns["answer_format"]
        for row in vote_metrics_rows(group, n_classes):
            rows.append({"dataset": dataset_id, **columns, "n_runs": int(group["run"].nunique()), **row})
    return rows


@asset(
    partitions_def=DATASET_PARTITIONS,
    deps=[AssetDep(prompt_predictions, partition_mapping=MultiToSingleDimensionPartitionMapping("dataset"))],
    group_name="prompted",
    kinds={"duckdb", "parquet"},
)
def vote_aggregates(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (dataset, model, template, method, shots, temperature, answer format, k, combination
    of runs): the metrics of the majority vote over those runs, ties going to the smallest label in
    sorted order. The runs of a k-shot partition show different shots, so their vote pools several
    draws of shots."""
    spec = experiment.load()
    config = spec.dataset(context.partition_key)
    store = results.store()
    if not store.files(PREDICTIONS_TABLE):
        predictions = pd.DataFrame()
    else:
        # Predictions stored before k-shot prompting or the temperature and format dimensions existed
        # lack those columns. They are zero-shot runs at the default temperature and format.
        present = set(store.query("DESCRIBE prompt_predictions")["column_name"])
        stored = [f"coalesce({column}, {default}) AS {column}" if column in present else f"{default} AS {column}"
                  for column, default in _STORED_DEFAULTS.items()]
        predictions = store.query(
            f"SELECT model, template, method, temperature, {', '.join(stored)}, run, idx, label, prediction "
            "FROM prompt_predictions WHERE dataset = ?",
            [config.id],
        )
    rows = configuration_vote_rows(predictions, config.id, len(config.label_names))
    # With fewer than 3 runs there is no k in 2..n-1, and the partition stores an empty table.
    frame = pd.DataFrame(rows, columns=VOTE_COLUMNS)
    if not frame.empty:
        provenance = provenance_columns({"tie_break": "smallest label index", "invalid_answers": "cast no vote"})
        for column, value in provenance.items():
            frame[column] = value
    path = store.write(VOTE_METRICS_TABLE, context.partition_key, frame)
    context.log.info("stored %d vote combinations for %s", len(frame), config.id)
    by_k = frame.groupby("k")["macro_f1"].mean().round(4).to_dict() if not frame.empty else {}
    return MaterializeResult(
        metadata={
            "rows": len(frame),
            "mean_macro_f1_by_k": MetadataValue.json({str(k): v for k, v in by_k.items()}),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[["model", "template", "k", "runs", "macro_f1"]] if not frame.empty else frame)),
        }
    )
