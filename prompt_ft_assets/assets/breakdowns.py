"""Per-dataset breakdowns: dataset statistics, and metrics per domain of every prompted run,
calibrated score partition and finetune seed."""


import pandas as pd
from dagster import (
    AssetDep,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from ..calibration import RAW
from ..dataset_statistics import split_statistics
from ..domains import ALL_DOMAINS, DomainError, domain_labels, domain_metric_rows
from ..partitions import DATASET_PARTITIONS, PromptRun
from ..previews import markdown_preview
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from ..store import ResultsStore
from ..summaries import default_setting_rows
from .calibrated import CALIBRATED_PREDICTIONS_TABLE, score_calibration
from .data import EXAMPLES_TABLE, dataset
from .finetuned import FINETUNE_PREDICTIONS_TABLE, finetuned_encoder
from .prompted import PREDICTIONS_TABLE, evaluation_examples, prompt_predictions

DATASET_STATISTICS_TABLE = "dataset_statistics"
DOMAIN_METRICS_TABLE = "domain_metrics"
FINETUNE_METHOD = "finetune"

_BY_DATASET = MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")


@asset(partitions_def=DATASET_PARTITIONS, deps=[dataset], group_name="data", kinds={"parquet"})
def dataset_statistics(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per split of the dataset: examples, label counts and shares, mean and median length
    in whitespace tokens and characters, vocabulary size and the Jaccard overlap of class vocabularies."""
    spec = experiment.load()
    config = spec.dataset(context.partition_key)
    store = results.store()
    frame = split_statistics(store.read(EXAMPLES_TABLE, context.partition_key), config)
    path = store.write(DATASET_STATISTICS_TABLE, context.partition_key, frame)
    context.log.info("stored statistics of %d splits of %s", len(frame), config.id)
    shown = ["split", "examples", "minority_class_share", "mean_tokens", "median_tokens", "mean_chars",
             "class_vocabulary_jaccard"]
    return MaterializeResult(
        metadata={
            "splits": len(frame),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[shown])),
        }
    )


def _select(store: ResultsStore, table: str, columns: list[str], dataset_id: str) -> pd.DataFrame:
    """Read the named columns of a table's rows of one dataset, leaving out a column that no file has."""
    if not store.files(table):
        return pd.DataFrame()
    pattern = "^(" + "|".join(columns) + ")$"
    return store.query(f"SELECT COLUMNS('{pattern}') FROM {table} WHERE dataset = ?", [dataset_id])


def _prompted_groups(store: ResultsStore, dataset_id: str):
    """(run columns, predictions) per prompted partition, then per calibrated score partition and calibration."""
    prompted = _select(store, PREDICTIONS_TABLE, ["dataset", "model", "template", "method", "run", "shots", "idx",
                                                  "label", "prediction", "temperature_is_default", "answer_format"],
                       dataset_id)
    # Runs of prompting.temperatures and prompting.answer_formats would share these groups, so only
    # runs at the default temperature and format are broken down.
    prompted = default_setting_rows(prompted)
    if not prompted.empty:
        prompted = prompted.assign(shots=prompted["shots"].fillna(0).astype(int) if "shots" in prompted else 0)
        for (model, template, method, shots, run), group in prompted.groupby(["model", "template", "method", "shots", "run"]):
            key = PromptRun(model, template, int(run), method, int(shots)).key
            yield {"method": method, "calibration": RAW, "model": model, "template": template, "shots": int(shots),
                   "run": int(run), "train_size": "", "run_key": key}, group
    calibrated = _select(store, CALIBRATED_PREDICTIONS_TABLE, ["dataset", "model", "template", "method", "shots",
                                                               "calibration", "idx", "label", "prediction"], dataset_id)
    if not calibrated.empty:
        calibrated = calibrated[calibrated["calibration"] != RAW]
        for (model, template, method, shots, calibration), group in calibrated.groupby(
            ["model", "template", "method", "shots", "calibration"]
        ):
            key = PromptRun(model, template, 0, method, int(shots)).key
            yield {"method": method, "calibration": calibration, "model": model, "template": template,
                   "shots": int(shots), "run": 0, "train_size": "", "run_key": key}, group


def _finetune_groups(store: ResultsStore, dataset_id: str):
    finetuned = _select(store, FINETUNE_PREDICTIONS_TABLE, ["dataset", "encoder", "seed", "train_size", "idx", "label",
                                                            "prediction"], dataset_id)
    if finetuned.empty:
        return
    sizes = finetuned["train_size"] if "train_size" in finetuned else pd.Series(pd.NA, index=finetuned.index)
    finetuned = finetuned.assign(train_size=sizes.map(lambda size: "all" if pd.isna(size) else str(int(size))))
    for (encoder, train_size, seed), group in finetuned.groupby(["encoder", "train_size", "seed"]):
        yield {"method": FINETUNE_METHOD, "calibration": RAW, "model": encoder, "template": "", "shots": 0,
               "run": int(seed), "train_size": train_size, "run_key": f"{encoder}__n{train_size}__s{int(seed)}"}, group


@asset(
    partitions_def=DATASET_PARTITIONS,
    deps=[
        AssetDep(prompt_predictions, partition_mapping=_BY_DATASET),
        AssetDep(score_calibration, partition_mapping=_BY_DATASET),
        AssetDep(finetuned_encoder, partition_mapping=_BY_DATASET),
    ],
    group_name="breakdowns",
    kinds={"duckdb", "parquet"},
)
def domain_metrics(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (run, domain) of the dataset: every prompted run, every calibration of a score
    partition and every finetune seed, with domain 'all' for the whole evaluation sample and one
    row per domain (in_domain, out_of_domain) of the spec's datasets[].domain. `run` is the
    prompted run or the finetune seed."""
    spec = experiment.load()
    config = spec.dataset(context.partition_key)
    if config.domain is None:
        raise Failure(description=f"dataset {config.id!r} has no domain in the spec; add datasets[].domain with the "
                      "metadata field and its out_of_domain values to break metrics down by domain",
                      allow_retries=False)
    store = results.store()
    evaluation = evaluation_examples(store.read(EXAMPLES_TABLE, context.partition_key), config.eval_split)
    try:
        domains = pd.Series(domain_labels(evaluation[config.domain.field], config.domain).to_numpy(),
                            index=evaluation["idx"].to_numpy())
        n_classes = len(config.label_names)
        rows = []
        for columns, group in _prompted_groups(store, config.id):
            for row in domain_metric_rows(group, domains, n_classes, seed=spec.prompting.base_seed):
                rows.append({"dataset": config.id, **columns, **row})
        for columns, group in _finetune_groups(store, config.id):
            for row in domain_metric_rows(group, domains, n_classes, seed=columns["run"]):
                rows.append({"dataset": config.id, **columns, **row})
    except DomainError as error:
        raise Failure(description=f"dataset {config.id}: {error}", allow_retries=False) from None

    frame = pd.DataFrame(rows)
    provenance = provenance_columns({"domain": config.domain.model_dump(), "bootstrap_seed_prompted": spec.prompting.base_seed})
    for column, value in provenance.items():
        frame[column] = value
    path = store.write(DOMAIN_METRICS_TABLE, context.partition_key, frame)
    counts = domains.value_counts().to_dict()
    context.log.info("stored %d domain metric rows of %s (evaluation rows per domain: %s)", len(frame), config.id, counts)
    mean_f1 = frame.groupby(["method", "domain"])["macro_f1"].mean().round(4) if not frame.empty else pd.Series(dtype=float)
    return MaterializeResult(
        metadata={
            "rows": len(frame),
            "evaluation_rows_per_domain": MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
            "mean_macro_f1": MetadataValue.json({f"{method} / {domain}": float(v) for (method, domain), v in mean_f1.items()}),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(
                frame[frame["domain"] != ALL_DOMAINS][["method", "calibration", "model", "template", "run", "domain",
                                                        "n", "macro_f1", "flags"]] if not frame.empty else frame
            )),
        }
    )
