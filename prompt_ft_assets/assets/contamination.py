"""Contamination probe: has each prompt model seen the dataset's evaluation sentences?"""


import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from ..completion_llama import CompletionLlama
from ..contamination import REAL, ProbeInputError, build_probe_items, summarize_probe
from ..contamination_runner import probe_model
from ..model_files import file_sha256, resolve_gguf
from ..partitions import DATASET_PARTITIONS
from ..previews import markdown_preview
from ..provenance import provenance_columns
from ..resources import ExperimentResource, ResultsStoreResource
from .data import EXAMPLES_TABLE, dataset
from .partition_lock import exclusive_partition

CONTAMINATION_ROWS_TABLE = "contamination_probe"
CONTAMINATION_SUMMARY_TABLE = "contamination_summary"


@asset(partitions_def=DATASET_PARTITIONS, deps=[dataset], group_name="contamination", kinds={"llama_cpp", "parquet"})
@exclusive_partition
def contamination_probe(
    context: AssetExecutionContext, experiment: ExperimentResource, results: ResultsStoreResource
) -> MaterializeResult:
    """One row per (model, sentence, condition) in contamination_probe: the first half given as a
    plain prompt, the condition's target continuation (real, shuffled or swapped), the greedy
    completion, exact match, shared prefix words, LCS ratio and the target's log-probability.
    contamination_summary has one row per (model, control) with real and control means and their
    paired bootstrap differences.

    The sentences are a sample of the whole evaluation split (not the prompted runs' eval_limit
    sample), stratified by label and drawn with contamination.seed. The first text field is probed.
    """
    spec = experiment.load()
    config = spec.dataset(context.partition_key)
    settings = spec.contamination
    if settings is None:
        raise Failure(description="the spec has no contamination section; add for example "
                      "`contamination: {examples: 100, seed: 0}` to probe the prompt models", allow_retries=False)
    store = results.store()
    examples = store.read(EXAMPLES_TABLE, context.partition_key)
    text_field = config.text_fields[0]
    evaluation = examples[examples["split"] == config.eval_split]
    try:
        items = build_probe_items(evaluation, text_field, settings.examples, settings.seed, settings.min_words,
                                  settings.controls)
    except ProbeInputError as error:
        raise Failure(description=f"dataset {config.id}: {error}", allow_retries=False) from None
    context.log.info("probing %d of %d evaluation sentences of %s with %d prompt models", len(items), len(evaluation),
                     config.id, len(spec.prompt_models))

    frames = []
    for model in spec.prompt_models:
        path = resolve_gguf(spec, model)
        sha256 = file_sha256(path)
        context.log.info("probing %s (%s, sha256 %s)", model.name, path.name, sha256[:12])
        engine = CompletionLlama(path, spec.prompting.n_ctx, spec.prompting.n_threads, model.chat_format,
                                 parallel=model.backend.parallel)
        try:
            rows = probe_model(engine, items, settings.seed, settings.max_new_tokens)
        finally:
            engine.close()
        # parallel is stored because llama.cpp's logits depend slightly on which sequences share a batch.
        frame = pd.DataFrame([
            {"dataset": config.id, "model": model.name, "model_sha256": sha256, "parallel": model.backend.parallel, **row}
            for row in rows
        ])
        frames.append(frame)
        real = frame[frame["condition"] == REAL]
        context.log.info("%s reproduced %d of %d second halves exactly", model.name, int(real["exact_match"].sum()),
                         len(real))

    probe_settings = {**settings.model_dump(), "temperature": 0.0, "text_field": text_field,
                      "eval_split": config.eval_split, "n_ctx": spec.prompting.n_ctx}
    provenance = provenance_columns(probe_settings)
    rows = pd.concat(frames, ignore_index=True).assign(seed=settings.seed, max_new_tokens=settings.max_new_tokens,
                                                       **provenance)
    summary = summarize_probe(rows, settings.seed, settings.bootstrap_resamples)
    summary = summary.assign(seed=settings.seed, max_new_tokens=settings.max_new_tokens, **provenance)
    rows_path = store.write(CONTAMINATION_ROWS_TABLE, context.partition_key, rows)
    summary_path = store.write(CONTAMINATION_SUMMARY_TABLE, context.partition_key, summary)

    flagged = sorted(set(summary.loc[summary["flag_reproduced"], "model"]))
    if flagged:
        context.log.warning("real second halves reproduced clearly more often than controls by %s", flagged)
    headline_columns = ["real_exact_match", "control_exact_match", "real_logprob_per_token", "control_logprob_per_token"]
    headline = {
        f"{row['model']} / {row['control']}": {column: round(float(row[column]), 4) for column in headline_columns}
        for _, row in summary.iterrows()
    }
    preview_columns = ["model", "control", "n_examples", "real_exact_match", "control_exact_match",
                       "exact_match_difference_low", "exact_match_difference_high", "real_lcs_ratio", "control_lcs_ratio",
                       "real_logprob_per_token", "control_logprob_per_token", "flag_reproduced"]
    return MaterializeResult(
        metadata={
            "rows": len(rows),
            "sentences": len(items),
            "flagged_models": MetadataValue.json(flagged),
            "headline": MetadataValue.json(headline),
            "path": MetadataValue.path(str(rows_path)),
            "summary_path": MetadataValue.path(str(summary_path)),
            "preview": MetadataValue.md(markdown_preview(summary[preview_columns])),
            "examples": MetadataValue.md(markdown_preview(
                rows[rows["condition"] == REAL][["model", "idx", "prompt", "target", "generated", "exact_match", "lcs_ratio"]]
            )),
        }
    )
