"""Calibrated label scoring: per score partition, fit calibration on train data and apply it to the
evaluation scores, storing raw and calibrated predictions and metrics side by side."""


import json

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from ..calibration import (
    CALIBRATIONS,
    CONTENT_FREE,
    RAW,
    TRAIN_SAMPLE,
    CalibrationError,
    CalibrationFit,
    apply_calibration,
    calibration_sample,
    content_free_examples,
    fit_calibration,
    score_matrix,
)
from ..finetune_splits import TrainSizeError
from ..metrics import classification_metrics, degenerate_run_flags
from ..partitions import PROMPTED_PARTITIONS, SCORE_METHOD, parse_prompt_run
from ..previews import markdown_preview
from ..prompt_runner import SCORE, run_prompt_partition
from ..prompt_shots import draw_shots
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from ..spec import CalibrationSettings, DatasetSpec
from ..templates import load_promptsource_templates, select_templates
from .data import EXAMPLES_TABLE
from .prompted import PREDICTIONS_TABLE, prompt_predictions

CALIBRATION_INPUTS_TABLE = "calibration_inputs"
CALIBRATION_FITS_TABLE = "calibration_fits"
CALIBRATED_PREDICTIONS_TABLE = "calibrated_predictions"
CALIBRATION_METRICS_TABLE = "calibration_metrics"
# Suffix of the cache-chunk names of calibration inputs, so they never share a name with the evaluation chunks.
_CACHE_SUFFIX = "+calibration"


def calibration_inputs(examples: pd.DataFrame, config: DatasetSpec, settings: CalibrationSettings) -> pd.DataFrame:
    """Build the rows scored for calibration: the stratified train sample, then the content-free inputs.

    Raises CalibrationError when a train-sample row is not from the train split, so no evaluation
    row can reach the fit.
    """
    sample = calibration_sample(examples, config, settings).assign(kind=TRAIN_SAMPLE)
    outside = sample[sample["split"] != config.train_split]
    if not outside.empty:
        raise CalibrationError(f"calibration sample rows {outside['idx'].tolist()[:5]} are not in train split {config.train_split!r}")
    content_free = content_free_examples(config, settings).assign(kind=CONTENT_FREE)
    columns = ["dataset", "split", "idx", "label", "kind", *config.text_fields, *config.metadata_fields]
    return pd.concat([sample[columns], content_free[columns]], ignore_index=True)


def fit_from_scored_inputs(scored: pd.DataFrame, n_classes: int) -> CalibrationFit:
    """Fit both calibrations from the scored calibration inputs (columns kind, label, choice_scores)."""
    train = scored[scored["kind"] == TRAIN_SAMPLE]
    content_free = scored[scored["kind"] == CONTENT_FREE]
    return fit_calibration(
        score_matrix(train["choice_scores"], n_classes), train["label"].to_numpy(),
        score_matrix(content_free["choice_scores"], n_classes), n_classes,
    )


def calibrated_prediction_rows(predictions: pd.DataFrame, fit: CalibrationFit, n_classes: int) -> pd.DataFrame:
    """Apply each calibration to the evaluation scores: one row per (example, calibration). Raw rows
    keep the stored predictions."""
    scores = score_matrix(predictions["choice_scores"], n_classes)
    base = predictions[["dataset", "split", "idx", "label", "model", "template", "method"]].reset_index(drop=True)
    frames = []
    for calibration in CALIBRATIONS:
        probabilities, predicted = apply_calibration(scores, fit, calibration)
        if calibration == RAW:
            predicted = predictions["prediction"].to_numpy(dtype=np.int64)
        frames.append(base.assign(
            calibration=calibration, prediction=predicted,
            probabilities=[json.dumps([round(float(v), 6) for v in row]) for row in probabilities],
        ))
    return pd.concat(frames, ignore_index=True)


def calibration_metric_rows(calibrated: pd.DataFrame, fit: CalibrationFit, n_classes: int, seed: int) -> list[dict]:
    """Compute one row per calibration: macro P/R/F1, accuracy, MCC, flags, the fitted parameters and
    the train-sample F1."""
    rows = []
    for calibration in CALIBRATIONS:
        group = calibrated[calibrated["calibration"] == calibration]
        metrics = classification_metrics(group["label"], group["prediction"], n_classes)
        flags = degenerate_run_flags(group["label"], group["prediction"], n_classes, seed=seed)
        rows.append({
            "calibration": calibration, **metrics.as_dict(),
            **flags.columns(),
            "parameters": json.dumps(fit.parameters(calibration)),
            "train_sample_macro_f1": fit.train_macro_f1(calibration),
        })
    return rows


@asset(partitions_def=PROMPTED_PARTITIONS, deps=[prompt_predictions], group_name="prompted", kinds={"llama_cpp", "parquet"})
def score_calibration(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """Calibration of one label-scoring partition, fit on train rows and content-free inputs only.

    Writes four tables: calibration_inputs (one row per scored train-sample example or content-free
    input), calibration_fits (one row per calibration: parameters, train-sample idx, seed),
    calibrated_predictions (one row per evaluation example and calibration) and
    calibration_metrics (one row per calibration: raw, contextual, threshold).
    """
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    prompt_run = parse_prompt_run(keys["prompt_run"])
    settings = spec.prompting.calibration
    if prompt_run.method != SCORE_METHOD:
        raise Failure(
            description=f"prompt_run {keys['prompt_run']} is a generate partition; calibration applies to label-scoring "
            "partitions ('<model>__<template>__score'), so materialize one of those",
            allow_retries=False,
        )
    if settings is None:
        raise Failure(description="prompting.calibration is null in the spec; set it to calibrate score partitions",
                      allow_retries=False)
    model = spec.prompt_model(prompt_run.model)
    template = select_templates(
        load_promptsource_templates(config.promptsource.dataset, config.promptsource.subset), [prompt_run.template]
    )[0]
    n_classes = len(config.label_names)
    store = results.store()
    examples = store.read(EXAMPLES_TABLE, keys["dataset"])
    try:
        inputs = calibration_inputs(examples, config, settings)
        # A k-shot partition's calibration inputs are shown the same shots as its evaluation examples.
        shots = draw_shots(examples, config, spec.finetune, prompt_run.shots, prompt_run.run)
    except (CalibrationError, TrainSizeError) as error:
        raise Failure(description=f"{context.partition_key}: {error}", allow_retries=False) from None
    context.log.info(
        "scoring %d train-sample examples and %d content-free inputs of %s for calibration of %s",
        int((inputs["kind"] == TRAIN_SAMPLE).sum()), int((inputs["kind"] == CONTENT_FREE).sum()), config.id,
        keys["prompt_run"],
    )
    scored = run_prompt_partition(
        spec, config, model, template, 0, inputs, store, f"{context.partition_key}{_CACHE_SUFFIX}", context.log.info,
        method=SCORE, shots=shots,
    )
    scored = scored.assign(split=inputs["split"].to_numpy(), kind=inputs["kind"].to_numpy())
    try:
        fit = fit_from_scored_inputs(scored, n_classes)
    except CalibrationError as error:
        raise Failure(description=f"{context.partition_key}: {error}", allow_retries=False) from None

    # The evaluation scores are read only now, after the fit.
    predictions = store.read(PREDICTIONS_TABLE, context.partition_key)
    calibrated = calibrated_prediction_rows(predictions, fit, n_classes)
    run_columns = {"dataset": config.id, "model": model.name, "template": prompt_run.template,
                   "method": prompt_run.method, "shots": prompt_run.shots}
    train_idx = json.dumps(scored.loc[scored["kind"] == TRAIN_SAMPLE, "idx"].astype(int).tolist())
    provenance = provenance_columns({**settings.model_dump(), "train_split": config.train_split,
                                     "bootstrap_seed": spec.prompting.base_seed})
    calibration_columns = {"calibration_seed": settings.seed, "train_sample_idx": train_idx,
                           "content_free_inputs": json.dumps(settings.content_free_inputs), **provenance}
    fits = pd.DataFrame([
        {**run_columns, "calibration": calibration, "parameters": json.dumps(fit.parameters(calibration)),
         "train_sample_macro_f1": fit.train_macro_f1(calibration), **calibration_columns}
        for calibration in CALIBRATIONS
    ])
    metrics = pd.DataFrame([
        {**run_columns, **row, **calibration_columns}
        for row in calibration_metric_rows(calibrated, fit, n_classes, spec.prompting.base_seed)
    ])
    input_columns = ["dataset", "split", "kind", "idx", "label", "model", "template", "prompt", "choice_scores",
                     "from_cache", "cache_key", "model_sha256"]
    store.write(CALIBRATION_INPUTS_TABLE, context.partition_key, scored[input_columns].assign(shots=prompt_run.shots))
    store.write(CALIBRATION_FITS_TABLE, context.partition_key, fits)
    store.write(CALIBRATED_PREDICTIONS_TABLE, context.partition_key, calibrated.assign(shots=prompt_run.shots))
    path = store.write(CALIBRATION_METRICS_TABLE, context.partition_key, metrics)
    f1 = dict(zip(metrics["calibration"], metrics["macro_f1"].round(4)))
    context.log.info("macro F1 of %s by calibration: %s", context.partition_key, f1)
    return MaterializeResult(
        metadata={
            "macro_f1": MetadataValue.json(f1),
            "flags": MetadataValue.json(dict(zip(metrics["calibration"], metrics["flags"]))),
            "content_free_probabilities": MetadataValue.json([float(v) for v in fit.content_free_probabilities]),
            "class_bias": MetadataValue.json([float(v) for v in fit.class_bias]),
            "train_sample_examples": int((scored["kind"] == TRAIN_SAMPLE).sum()),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(
                metrics[["calibration", "macro_f1", "mcc", "train_sample_macro_f1", "flags", "parameters"]]
            )),
        }
    )
