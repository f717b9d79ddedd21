"""Prompted assets: raw answers per (dataset, model, template, run) and their metrics."""


import json

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from ..finetune_splits import TrainSizeError
from ..metrics import classification_metrics, degenerate_run_flags
from ..partitions import PROMPTED_PARTITIONS, parse_prompt_run
from ..previews import markdown_preview
from ..prompt_runner import run_prompt_partition
from ..prompt_setting_columns import run_setting_columns
from ..prompt_shots import draw_shots, stored_shot_columns
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from ..templates import load_promptsource_templates, select_templates
from .data import EXAMPLES_TABLE, dataset, prompt_templates
from .partition_lock import exclusive_partition

PREDICTIONS_TABLE = "prompt_predictions"
RUN_METRICS_TABLE = "prompt_run_metrics"
# A partition whose invalid-answer rate exceeds this fails its asset check (a warning, not an error).
MAX_INVALID_RATE = 0.10

_BY_DATASET = MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")


def evaluation_examples(examples: pd.DataFrame, eval_split: str) -> pd.DataFrame:
    """The rows of the evaluation sample, in index order."""
    chosen = examples[(examples["split"] == eval_split) & examples["in_sample"]]
    return chosen.sort_values("idx").reset_index(drop=True)


@asset(
    partitions_def=PROMPTED_PARTITIONS,
    deps=[AssetDep(dataset, partition_mapping=_BY_DATASET), AssetDep(prompt_templates, partition_mapping=_BY_DATASET)],
    group_name="prompted",
    kinds={"llama_cpp", "parquet"},
    check_specs=[AssetCheckSpec("predictions_cover_evaluation_sample", asset="prompt_predictions")],
)
@exclusive_partition
def prompt_predictions(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per evaluation example, model, template, number of shots, temperature, answer format and
    run: the rendered prompt, the raw output, the parsed rationale and label, validity and its reason,
    whether the answer followed the format, finish reason, token counts, latency and finish time. prompt contains the last user turn, and the shots shown before it are the train
    rows listed in shot_idx (a JSON list of train-split idx, empty for zero-shot).

    Invalid answers are kept with prediction -1 and counted as wrong by the metrics.
    """
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    prompt_run = parse_prompt_run(keys["prompt_run"])
    model = spec.prompt_model(prompt_run.model)
    template = select_templates(
        load_promptsource_templates(config.promptsource.dataset, config.promptsource.subset), [prompt_run.template]
    )[0]
    store = results.store()
    stored = store.read(EXAMPLES_TABLE, keys["dataset"])
    examples = evaluation_examples(stored, config.eval_split)
    try:
        shots = draw_shots(stored, config, spec.finetune, prompt_run.shots, prompt_run.run)
    except TrainSizeError as error:
        raise Failure(description=f"run {keys['prompt_run']} of {config.id}: {error}", allow_retries=False) from None
    context.log.info(
        "prompting %s with template %s, %s run %d with %d shots (finetune seed %d), temperature %s, format %s, "
        "on %d examples of %s",
        model.name, template.name, prompt_run.method, prompt_run.run, shots.k, shots.seed,
        "default" if prompt_run.temperature is None else prompt_run.temperature, prompt_run.answer_format,
        len(examples), config.id,
    )
    frame = run_prompt_partition(
        spec, config, model, template, prompt_run.run, examples, store, context.partition_key, context.log.info,
        method=prompt_run.method, shots=shots, temperature=prompt_run.temperature, answer_format=prompt_run.answer_format,
        sibling_runs=range(spec.prompting.runs) if spec.prompting.share_runs else (),
    )
    path = store.write(PREDICTIONS_TABLE, context.partition_key, frame)
    valid_rate = float(frame["valid"].mean())
    duplicated = int(frame["idx"].duplicated().sum())
    missing = len(set(examples["idx"]) - set(frame["idx"]))
    coverage = AssetCheckResult(
        check_name="predictions_cover_evaluation_sample",
        passed=duplicated == 0 and missing == 0,
        metadata={"expected_rows": len(examples), "rows": len(frame), "duplicated": duplicated, "missing": missing},
    )
    return MaterializeResult(
        check_results=[coverage],
        metadata={
            "rows": len(frame),
            "valid_rate": valid_rate,
            "from_cache": int(frame["from_cache"].sum()),
            "mean_latency_s": float(frame["latency_s"].mean()),
            "predicted_label_counts": MetadataValue.json(frame["label_text"].fillna("<invalid>").value_counts().to_dict()),
            "invalid_reasons": MetadataValue.json(frame["invalid_reason"].dropna().value_counts().to_dict()),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[["idx", "label", "prediction", "valid", "raw_output"]])),
        }
    )


@asset(
    partitions_def=PROMPTED_PARTITIONS,
    deps=[prompt_predictions],
    group_name="prompted",
    kinds={"parquet"},
    check_specs=[AssetCheckSpec("invalid_rate_below_bound", asset="prompt_run_metrics")],
)
def prompt_run_metrics(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (dataset, model, template, method, shots, temperature, answer format, run): macro
    precision, recall and F1, accuracy, MCC, the invalid-answer rate, degenerate-run flags (one class,
    near chance, mostly invalid), the rate of answers that followed the format, and cost per 1,000
    classifications (completion tokens and busy seconds)."""
    keys = context.partition_key.keys_by_dimension
    spec = experiment.load()
    config = spec.dataset(keys["dataset"])
    prompt_run = parse_prompt_run(keys["prompt_run"])
    model = spec.prompt_model(prompt_run.model)
    store = results.store()
    predictions = store.read(PREDICTIONS_TABLE, context.partition_key)

    n_classes = len(config.label_names)
    metrics = classification_metrics(predictions["label"], predictions["prediction"], n_classes)
    flags = degenerate_run_flags(predictions["label"], predictions["prediction"], n_classes, seed=spec.prompting.base_seed)
    row = {
        "dataset": config.id, "model": model.name, "template": prompt_run.template, "run": prompt_run.run,
        "method": prompt_run.method, "run_seed": int(predictions["run_seed"].iloc[0]),
        **stored_shot_columns(predictions),
        "temperature": float(predictions["temperature"].iloc[0]),
        **run_setting_columns(predictions, prompt_run.method),
        "family": model.family, "params_b": model.params_b, "active_params_b": model.active_params_b or model.params_b,
        "is_moe": model.is_moe, "generation": model.generation, "tracks": json.dumps(model.tracks),
        **metrics.as_dict(),
        **flags.columns(),
        "mean_latency_s": float(predictions["latency_s"].mean()),
        "mean_completion_tokens": float(predictions["completion_tokens"].mean()),
        "truncated_answers": int((predictions["finish_reason"] == "length").sum()),
        # Invalid answers per parsing.py reason, for example {"not_json": 2}; "{}" when all are valid.
        "invalid_reasons": json.dumps(predictions["invalid_reason"].dropna().value_counts().sort_index().to_dict()),
        "model_sha256": str(predictions["model_sha256"].iloc[0]),
        **provenance_columns({"n_classes": n_classes, "bootstrap_seed": spec.prompting.base_seed}),
    }
    frame = pd.DataFrame([row])
    path = store.write(RUN_METRICS_TABLE, context.partition_key, frame)
    if flags.labels:
        context.log.warning("run %s is flagged: %s (MCC %.3f)", context.partition_key, flags.labels, metrics.mcc)
    invalid_check = AssetCheckResult(
        check_name="invalid_rate_below_bound",
        passed=bool(metrics.invalid_rate <= MAX_INVALID_RATE),
        metadata={"invalid_rate": metrics.invalid_rate, "bound": MAX_INVALID_RATE},
    )
    return MaterializeResult(
        check_results=[invalid_check],
        metadata={
            "macro_f1": metrics.macro_f1,
            "macro_precision": metrics.macro_precision,
            "macro_recall": metrics.macro_recall,
            "accuracy": metrics.accuracy,
            "mcc": metrics.mcc,
            "invalid_rate": metrics.invalid_rate,
            "invalid_reasons": MetadataValue.json(json.loads(row["invalid_reasons"])),
            "flags": flags.labels or "none",
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(markdown_preview(frame[["model", "template", "run", "macro_f1", "mcc", "invalid_rate", "flags"]])),
        }
    )


def predictions_matrix(frame: pd.DataFrame) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Run ids, a (runs, examples) prediction array and the gold labels, for one (model, template)."""
    wide = frame.pivot(index="run", columns="idx", values="prediction").sort_index()
    labels = frame.drop_duplicates("idx").set_index("idx").loc[wide.columns, "label"].to_numpy()
    return wide.index.tolist(), wide.to_numpy(dtype=np.int64), labels
