"""Finetuning assets: one trained encoder per (dataset, encoder, seed) and its metrics."""


import json
import time

import numpy as np
import pandas as pd
from dagster import AssetDep, AssetExecutionContext, MaterializeResult, MetadataValue, MultiToSingleDimensionPartitionMapping, asset

from ..finetune import train_and_predict
from ..metrics import classification_metrics, degenerate_run_flags
from ..model_files import resolve_encoder
from ..partitions import FINETUNE_PARTITIONS, parse_finetune_run
from ..paths import checkpoints_dir
from ..previews import markdown_preview
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from ..spec import DatasetSpec, FinetuneSettings
from ..store import partition_file_name
from .data import EXAMPLES_TABLE, dataset
from .prompted import evaluation_examples

FINETUNE_PREDICTIONS_TABLE = "finetune_predictions"
FINETUNE_METRICS_TABLE = "finetune_metrics"
PROGRESS_INTERVAL_S = 15.0


def training_examples(examples: pd.DataFrame, config: DatasetSpec, settings: FinetuneSettings) -> pd.DataFrame:
    """The train sample, less the held-out fold when k-fold is on. Never reads the evaluation split."""
    train = examples[(examples["split"] == config.train_split) & examples["in_sample"]].sort_values("idx")
    if settings.k_fold >= 2:
        rng = np.random.default_rng(config.train_seed)
        folds = rng.permutation(len(train)) % settings.k_fold
        train = train[folds != settings.current_fold]
    return train.reset_index(drop=True)


def _texts(frame: pd.DataFrame, fields: list[str]) -> list[tuple[str, ...]]:
    return list(zip(*(frame[field].astype(str).tolist() for field in fields)))


@asset(
    partitions_def=FINETUNE_PARTITIONS,
    deps=[AssetDep(dataset, partition_mapping=MultiToSingleDimensionPartitionMapping("dataset"))],
    group_name="finetuned",
    kinds={"pytorch", "parquet"},
)
def finetuned_encoder(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """A checkpoint under data/checkpoints and one prediction row per evaluation example."""
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    finetune_run = parse_finetune_run(keys["finetune_run"])
    encoder = spec.encoder(finetune_run.encoder)
    settings = spec.finetune
    store = results.store()
    examples = store.read(EXAMPLES_TABLE, keys["dataset"])
    train = training_examples(examples, config, settings)
    evaluation = evaluation_examples(examples, config.eval_split)
    model_path = resolve_encoder(spec, encoder)
    checkpoint = checkpoints_dir() / partition_file_name(context.partition_key).removesuffix(".parquet")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    context.log.info(
        "finetuning %s (seed %d) on %d train examples of %s for %s epochs at lr %g",
        encoder.name, finetune_run.seed, len(train), config.id, settings.num_epochs, settings.learning_rate,
    )
    last_report = [time.perf_counter()]

    def progress(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or now - last_report[0] >= PROGRESS_INTERVAL_S:
            last_report[0] = now
            context.log.info("step %d of %d, loss %.4f", step, total, loss)

    result = train_and_predict(
        model_path, _texts(train, config.text_fields), train["label"].tolist(), _texts(evaluation, config.text_fields),
        len(config.label_names), settings, finetune_run.seed, checkpoint, progress,
    )
    frame = evaluation[["dataset", "split", "idx", "label", *config.metadata_fields]].copy()
    frame["encoder"] = encoder.name
    frame["seed"] = finetune_run.seed
    frame["prediction"] = result.predictions
    frame["train_examples"] = len(train)
    frame["train_seconds"] = result.train_seconds
    frame["train_examples_per_second"] = result.train_examples_per_second
    frame["infer_seconds_per_example"] = result.infer_seconds_per_example
    frame["checkpoint_bytes"] = result.checkpoint_bytes
    frame["checkpoint_path"] = str(checkpoint)
    frame["device"] = result.device
    for column, value in provenance_columns({**settings.model_dump(), "seed": finetune_run.seed, "model": model_path}).items():
        frame[column] = value
    path = store.write(FINETUNE_PREDICTIONS_TABLE, context.partition_key, frame)
    return MaterializeResult(
        metadata={
            "rows": len(frame),
            "train_examples": len(train),
            "train_seconds": result.train_seconds,
            "final_loss": result.final_loss,
            "checkpoint": MetadataValue.path(str(checkpoint)),
            "checkpoint_mb": result.checkpoint_bytes / 1e6,
            "predicted_label_counts": MetadataValue.json({str(k): int(v) for k, v in frame["prediction"].value_counts().items()}),
            "path": MetadataValue.path(str(path)),
        }
    )


@asset(partitions_def=FINETUNE_PARTITIONS, deps=[finetuned_encoder], group_name="finetuned", kinds={"parquet"})
def finetune_metrics(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (dataset, encoder, seed): macro precision, recall and F1, accuracy, MCC and flags."""
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    finetune_run = parse_finetune_run(keys["finetune_run"])
    encoder = spec.encoder(finetune_run.encoder)
    store = results.store()
    predictions = store.read(FINETUNE_PREDICTIONS_TABLE, context.partition_key)
    n_classes = len(config.label_names)
    metrics = classification_metrics(predictions["label"], predictions["prediction"], n_classes)
    flags = degenerate_run_flags(predictions["label"], predictions["prediction"], n_classes, seed=finetune_run.seed)
    first = predictions.iloc[0]
    row = {
        "dataset": config.id, "encoder": encoder.name, "family": encoder.family, "params_m": encoder.params_m,
        "seed": finetune_run.seed, **metrics.as_dict(),
        "mcc_ci_low": flags.mcc_ci_low, "mcc_ci_high": flags.mcc_ci_high,
        "flag_one_class": flags.one_class, "flag_near_chance": flags.near_chance, "flag_high_invalid": flags.high_invalid,
        "flags": flags.labels,
        "train_examples": int(first["train_examples"]), "train_seconds": float(first["train_seconds"]),
        "infer_seconds_per_example": float(first["infer_seconds_per_example"]),
        "checkpoint_bytes": int(first["checkpoint_bytes"]), "device": first["device"],
        "settings_json": first["settings_json"], "versions_json": first["versions_json"], "git_commit": first["git_commit"],
    }
    frame = pd.DataFrame([row])
    path = store.write(FINETUNE_METRICS_TABLE, context.partition_key, frame)
    if flags.labels:
        context.log.warning("finetune %s is flagged: %s (MCC %.3f)", context.partition_key, flags.labels, metrics.mcc)
    return MaterializeResult(
        metadata={
            "macro_f1": metrics.macro_f1, "macro_precision": metrics.macro_precision, "macro_recall": metrics.macro_recall,
            "accuracy": metrics.accuracy, "mcc": metrics.mcc, "flags": flags.labels or "none",
            "settings": MetadataValue.json(json.loads(first["settings_json"])),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[["encoder", "seed", "macro_f1", "mcc", "flags"]])),
        }
    )
