"""Finetuning assets: hyperparameter selection, one trained encoder per run, and its metrics.

A run is (dataset, encoder, train size, seed). When the spec sets finetune.grid, the
hyperparameters of every run of an (encoder, train size) come from finetune_selection, which
cross-validates the grid on train rows only.
"""


import json
import time

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    DimensionPartitionMapping,
    Failure,
    IdentityPartitionMapping,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from ..finetune import CPU_LATENCY_EXAMPLES, EncoderLoadError, FinetuneResult, train_and_predict
from ..finetune_splits import TrainSizeError, held_out_examples, training_examples
from ..hyperparameter_search import apply_point, chosen_hyperparameters, select_hyperparameters
from ..metrics import classification_metrics, degenerate_run_flags
from ..model_files import resolve_encoder
from ..partitions import (
    FINETUNE_PARTITIONS,
    FINETUNE_SELECTION_PARTITIONS,
    parse_finetune_run,
    parse_finetune_selection,
    train_size_label,
)
from ..paths import checkpoints_dir
from ..previews import markdown_preview
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from ..spec import GRID_SETTINGS, FinetuneSettings
from ..store import ResultsStore, partition_file_name
from .data import EXAMPLES_TABLE, dataset
from .partition_lock import exclusive_partition
from .prompted import evaluation_examples

FINETUNE_SELECTION_TABLE = "finetune_selection"
FINETUNE_PREDICTIONS_TABLE = "finetune_predictions"
FINETUNE_HELD_OUT_TABLE = "finetune_heldout_predictions"
FINETUNE_METRICS_TABLE = "finetune_metrics"
PROGRESS_INTERVAL_S = 15.0
METHOD = "finetune"

_BY_DATASET = MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
# Each run depends on the selections of its dataset. Dagster's built-in mappings cannot map
# '<encoder>__n<size>__s<seed>' to '<encoder>__n<size>', so the run dimension maps to all selections.
_SELECTIONS_OF_DATASET = MultiPartitionMapping(
    {"dataset": DimensionPartitionMapping(dimension_name="dataset", partition_mapping=IdentityPartitionMapping())}
)

__all__ = ["training_examples", "finetune_selection", "finetuned_encoder", "finetune_metrics"]


def _texts(frame: pd.DataFrame, fields: list[str]) -> list[tuple[str, ...]]:
    return list(zip(*(frame[field].astype(str).tolist() for field in fields)))


def _progress_logger(context: AssetExecutionContext, label: str):
    last_report = [time.perf_counter()]

    def progress(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or now - last_report[0] >= PROGRESS_INTERVAL_S:
            last_report[0] = now
            context.log.info("%s: step %d of %d, loss %.4f", label, step, total, loss)

    return progress


def _hyperparameters(settings: FinetuneSettings) -> dict[str, float | int]:
    return {name: getattr(settings, name) for name in GRID_SETTINGS}


@asset(
    partitions_def=FINETUNE_SELECTION_PARTITIONS,
    deps=[AssetDep(dataset, partition_mapping=_BY_DATASET)],
    group_name="finetuned",
    kinds={"pytorch", "parquet"},
)
@exclusive_partition
def finetune_selection(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (grid point, selection fold): the point's hyperparameters, fold sizes, the
    held-out fold's macro P/R/F1, accuracy and MCC, the point's mean F1 over folds, and `chosen`.

    Folds are cut from the train pool less the k_fold held-out fold; the evaluation split is never read.
    """
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    selection = parse_finetune_selection(keys["finetune_selection"])
    encoder = spec.encoder(selection.encoder)
    settings = spec.finetune
    if not settings.grid:
        raise Failure(description="finetune.grid is not set in the spec, so there is nothing to select; add a grid or skip this asset")
    model_path = resolve_encoder(spec, encoder)
    examples = results.store().read(EXAMPLES_TABLE, keys["dataset"])
    n_classes = len(config.label_names)

    def fit_predict(fit: pd.DataFrame, held_out: pd.DataFrame, point_settings: FinetuneSettings, seed: int) -> np.ndarray:
        label = f"{encoder.name} {_hyperparameters(point_settings)} on {len(fit)} rows"
        result = train_and_predict(
            model_path, _texts(fit, config.text_fields), fit["label"].tolist(), _texts(held_out, config.text_fields),
            n_classes, point_settings, seed, None, _progress_logger(context, label),
            encoder=encoder.name, latency_examples=0, measure_checkpoint=False,
        )
        return result.predictions

    context.log.info(
        "selecting hyperparameters of %s (train size %s) on %s from grid %s with %d folds",
        encoder.name, train_size_label(selection.train_size), config.id, settings.grid, settings.selection_folds,
    )
    try:
        frame = select_hyperparameters(examples, config, settings, selection.train_size, fit_predict)
    except EncoderLoadError as error:
        raise Failure(description=str(error), allow_retries=False) from None
    frame.insert(0, "dataset", config.id)
    frame.insert(1, "encoder", encoder.name)
    frame.insert(2, "family", encoder.family)
    frame.insert(3, "params_m", encoder.params_m)
    frame.insert(4, "train_size", selection.train_size)
    frame["train_size"] = frame["train_size"].astype("Int64")
    frame["selection_folds"] = settings.selection_folds
    frame["seed"] = settings.selection_seed
    provenance = provenance_columns(
        {**settings.model_dump(), "seed": settings.selection_seed, "train_size": selection.train_size, "model": model_path}
    )
    for column, value in provenance.items():
        frame[column] = value
    path = results.store().write(FINETUNE_SELECTION_TABLE, context.partition_key, frame)
    chosen = chosen_hyperparameters(frame)
    per_point = frame.drop_duplicates("point")[["point", "hyperparameters_json", "mean_macro_f1", "std_macro_f1", "chosen"]]
    context.log.info("chose %s for %s (train size %s)", chosen, encoder.name, train_size_label(selection.train_size))
    return MaterializeResult(
        metadata={
            "chosen": MetadataValue.json(chosen),
            "chosen_mean_macro_f1": float(frame.loc[frame["chosen"], "mean_macro_f1"].iloc[0]),
            "grid_points": len(per_point),
            "fits": len(frame),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(per_point, rows=len(per_point))),
        }
    )


def run_settings(store: ResultsStore, settings: FinetuneSettings, dataset_id: str, selection_key: str) -> tuple[FinetuneSettings, str]:
    """Return the settings a run trains with and where its hyperparameters come from ('spec' or 'grid')."""
    if not settings.grid:
        return settings, "spec"
    partition = str(MultiPartitionKey({"dataset": dataset_id, "finetune_selection": selection_key}))
    if not store.exists(FINETUNE_SELECTION_TABLE, partition):
        raise Failure(
            description=(
                f"finetune.grid is set but finetune_selection has no partition {partition!r}; materialize it first "
                "(prompt-ft run does so in its selection stage)"
            ),
            allow_retries=False,
        )
    return apply_point(settings, chosen_hyperparameters(store.read(FINETUNE_SELECTION_TABLE, partition))), "grid"


def _prediction_frame(rows: pd.DataFrame, predictions: np.ndarray, metadata_fields: list[str]) -> pd.DataFrame:
    frame = rows[["dataset", "split", "idx", "label", *metadata_fields]].copy()
    frame["prediction"] = predictions
    return frame


def _run_columns(result: FinetuneResult, encoder, run, settings: FinetuneSettings, source: str, n_train: int) -> dict:
    """Columns every prediction row of a run carries: the run, its hyperparameters and its cost."""
    return {
        "method": METHOD,
        "encoder": encoder.name,
        "family": encoder.family,
        "params_m": encoder.params_m,
        "params_counted": result.params_counted,
        "seed": run.seed,
        "train_size": run.train_size,
        "train_examples": n_train,
        **_hyperparameters(settings),
        "hyperparameters_source": source,
        "train_steps": result.train_steps,
        "train_seconds": result.train_seconds,
        "train_examples_per_second": result.train_examples_per_second,
        "infer_seconds_per_example": result.infer_seconds_per_example,
        "infer_cpu_seconds_per_example": result.infer_cpu_seconds_per_example,
        "latency_examples": result.latency_examples,
        "torch_threads": result.torch_threads,
        "checkpoint_bytes": result.checkpoint_bytes,
        "final_loss": result.final_loss,
        "device": result.device,
    }


@asset(
    partitions_def=FINETUNE_PARTITIONS,
    deps=[
        AssetDep(dataset, partition_mapping=_BY_DATASET),
        AssetDep(finetune_selection, partition_mapping=_SELECTIONS_OF_DATASET),
    ],
    group_name="finetuned",
    kinds={"pytorch", "parquet"},
    check_specs=[AssetCheckSpec("predicts_more_than_one_class", asset="finetuned_encoder")],
)
@exclusive_partition
def finetuned_encoder(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """A checkpoint under data/checkpoints and one prediction row per evaluation example, carrying
    the run (encoder, family, parameters, seed, train size), its hyperparameters, cost and provenance.

    With k_fold >= 2, the held-out train fold's predictions go to finetune_heldout_predictions.
    """
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    run = parse_finetune_run(keys["finetune_run"])
    encoder = spec.encoder(run.encoder)
    store = results.store()
    settings, source = run_settings(store, spec.finetune, config.id, run.selection.key)
    examples = store.read(EXAMPLES_TABLE, keys["dataset"])
    try:
        train = training_examples(examples, config, settings, run.train_size, run.seed)
    except TrainSizeError as error:
        raise Failure(description=f"run {keys['finetune_run']} of {config.id}: {error}", allow_retries=False) from None
    held_out = held_out_examples(examples, config, settings)
    evaluation = evaluation_examples(examples, config.eval_split)
    model_path = resolve_encoder(spec, encoder)
    checkpoint = None
    if settings.keep_checkpoints:
        checkpoint = checkpoints_dir() / partition_file_name(context.partition_key).removesuffix(".parquet")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    context.log.info(
        "finetuning %s (seed %d) on %d train examples of %s with %s hyperparameters %s",
        encoder.name, run.seed, len(train), config.id, source, _hyperparameters(settings),
    )
    # The held-out fold is predicted in the same pass, after the evaluation rows; latency is timed on evaluation rows only.
    try:
        result = train_and_predict(
            model_path, _texts(train, config.text_fields), train["label"].tolist(),
            _texts(evaluation, config.text_fields) + _texts(held_out, config.text_fields),
            len(config.label_names), settings, run.seed, checkpoint, _progress_logger(context, encoder.name),
            encoder=encoder.name, latency_examples=min(CPU_LATENCY_EXAMPLES, len(evaluation)),
        )
    except EncoderLoadError as error:
        raise Failure(description=str(error), allow_retries=False) from None

    run_columns = _run_columns(result, encoder, run, settings, source, len(train))
    provenance = provenance_columns(
        {**settings.model_dump(), "seed": run.seed, "train_size": run.train_size, "model": model_path,
         "hyperparameters_source": source, "spec_grid": spec.finetune.grid}
    )
    frames = {}
    for table, rows, predictions in (
        (FINETUNE_PREDICTIONS_TABLE, evaluation, result.predictions[: len(evaluation)]),
        (FINETUNE_HELD_OUT_TABLE, held_out, result.predictions[len(evaluation) :]),
    ):
        frame = _prediction_frame(rows, predictions, config.metadata_fields)
        for column, value in {**run_columns, "checkpoint_path": str(checkpoint or ""), **provenance}.items():
            frame[column] = value
        frame["train_size"] = frame["train_size"].astype("Int64")
        frames[table] = frame
    path = store.write(FINETUNE_PREDICTIONS_TABLE, context.partition_key, frames[FINETUNE_PREDICTIONS_TABLE])
    if len(held_out):
        store.write(FINETUNE_HELD_OUT_TABLE, context.partition_key, frames[FINETUNE_HELD_OUT_TABLE])
    else:
        store.delete(FINETUNE_HELD_OUT_TABLE, context.partition_key)

    predicted = frames[FINETUNE_PREDICTIONS_TABLE]["prediction"].value_counts()
    return MaterializeResult(
        metadata={
            "rows": len(evaluation),
            "held_out_rows": len(held_out),
            "train_examples": len(train),
            "train_seconds": result.train_seconds,
            "infer_cpu_ms_per_example": result.infer_cpu_seconds_per_example * 1e3,
            "final_loss": result.final_loss,
            "hyperparameters": MetadataValue.json({**_hyperparameters(settings), "source": source}),
            "checkpoint": MetadataValue.path(str(checkpoint)) if checkpoint else "not kept",
            "checkpoint_mb": result.checkpoint_bytes / 1e6,
            "predicted_label_counts": MetadataValue.json({str(k): int(v) for k, v in predicted.items()}),
            "path": MetadataValue.path(str(path)),
        },
        check_results=[
            AssetCheckResult(
                check_name="predicts_more_than_one_class",
                passed=len(predicted) > 1,
                severity=AssetCheckSeverity.WARN,
                metadata={"predicted_classes": len(predicted)},
            )
        ],
    )


def _held_out_metrics(store: ResultsStore, partition_key: str, n_classes: int) -> dict[str, float]:
    """Macro F1, accuracy and MCC on the held-out train fold; NaN when k_fold is off."""
    if not store.exists(FINETUNE_HELD_OUT_TABLE, partition_key):
        return {"heldout_n": 0, "heldout_macro_f1": float("nan"), "heldout_accuracy": float("nan"), "heldout_mcc": float("nan")}
    held_out = store.read(FINETUNE_HELD_OUT_TABLE, partition_key)
    metrics = classification_metrics(held_out["label"], held_out["prediction"], n_classes)
    return {"heldout_n": metrics.n, "heldout_macro_f1": metrics.macro_f1, "heldout_accuracy": metrics.accuracy, "heldout_mcc": metrics.mcc}


# Columns copied from the first prediction row of a run into its metrics row.
_RUN_COLUMNS = (
    "method", "family", "params_m", "params_counted", "train_size", "train_examples", *GRID_SETTINGS,
    "hyperparameters_source", "train_steps", "train_seconds", "train_examples_per_second", "infer_seconds_per_example",
    "infer_cpu_seconds_per_example", "latency_examples", "torch_threads", "checkpoint_bytes", "device",
    "settings_json", "versions_json", "git_commit",
)


@asset(partitions_def=FINETUNE_PARTITIONS, deps=[finetuned_encoder], group_name="finetuned", kinds={"parquet"})
def finetune_metrics(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (dataset, encoder, train size, seed): macro precision, recall and F1, accuracy,
    MCC and flags on the evaluation sample, the same on the held-out train fold when k_fold is on,
    and the run's hyperparameters, cost and provenance columns."""
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    run = parse_finetune_run(keys["finetune_run"])
    encoder = spec.encoder(run.encoder)
    store = results.store()
    predictions = store.read(FINETUNE_PREDICTIONS_TABLE, context.partition_key)

    n_classes = len(config.label_names)
    metrics = classification_metrics(predictions["label"], predictions["prediction"], n_classes)
    flags = degenerate_run_flags(predictions["label"], predictions["prediction"], n_classes, seed=run.seed)
    first = predictions.iloc[0]
    row = {
        "dataset": config.id, "encoder": encoder.name, "seed": run.seed,
        **{column: first[column] for column in _RUN_COLUMNS if column in predictions.columns},
        **metrics.as_dict(),
        **flags.columns(),
        **_held_out_metrics(store, context.partition_key, n_classes),
    }
    row.setdefault("method", METHOD)
    row.setdefault("family", encoder.family)
    row.setdefault("params_m", encoder.params_m)

    frame = pd.DataFrame([row])
    frame["train_size"] = frame["train_size"].astype("Int64") if "train_size" in frame else pd.NA
    path = store.write(FINETUNE_METRICS_TABLE, context.partition_key, frame)
    if flags.labels:
        context.log.warning("finetune %s is flagged: %s (MCC %.3f)", context.partition_key, flags.labels, metrics.mcc)
    return MaterializeResult(
        metadata={
            "macro_f1": metrics.macro_f1, "macro_precision": metrics.macro_precision, "macro_recall": metrics.macro_recall,
            "accuracy": metrics.accuracy, "mcc": metrics.mcc, "flags": flags.labels or "none",
            "heldout_macro_f1": float(row["heldout_macro_f1"]),
            "settings": MetadataValue.json(json.loads(first["settings_json"])),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[["encoder", "seed", "train_examples", "macro_f1", "mcc", "flags"]])),
        }
    )
