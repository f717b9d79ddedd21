"""Run one prompted partition: render, generate (or reuse cached answers), parse, and build the rows.

Answers are written to the prediction cache in small chunks as they are generated. A run that is
killed keeps every finished chunk, and the rerun generates only the examples whose cache key is
missing, so each example ends up exactly once in the partition's predictions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from .llama_backend import LlamaCppGenerator
from .model_files import file_sha256, resolve_gguf
from .parsing import parse_answer
from .prompting import answer_grammar, build_messages, cache_key, example_seed
from .provenance import provenance_columns
from .spec import DatasetSpec, ExperimentSpec, PromptModelSpec
from .store import ResultsStore, partition_file_name
from .templates import PromptTemplate, render

logger = logging.getLogger(__name__)

CACHE_TABLE = "prediction_cache"
# Answers are flushed to the cache every this many examples, so a kill loses at most this many.
CACHE_CHUNK = 8
PROGRESS_INTERVAL_S = 15.0


@dataclass(frozen=True)
class PendingExample:
    idx: int
    label: int
    messages: list[dict[str, str]]
    answer_choices: list[str]
    seed: int
    key: str
    grammar: str


def _cache_prefix(model_sha256: str) -> str:
    return model_sha256[:16]


def read_cached_answers(store: ResultsStore, model_sha256: str, keys: list[str]) -> pd.DataFrame:
    """Stored answers for the given cache keys, one row per key (the earliest if a key was stored twice)."""
    folder = store.table_dir(CACHE_TABLE)
    pattern = f"{_cache_prefix(model_sha256)}+*.parquet"
    if not keys or not any(folder.glob(pattern)):
        return pd.DataFrame()
    with store.connect() as connection:
        return connection.execute(
            f"""
            SELECT * FROM read_parquet('{folder.resolve() / pattern}', union_by_name = true)
            WHERE cache_key IN (SELECT unnest(?::VARCHAR[]))
            QUALIFY row_number() OVER (PARTITION BY cache_key ORDER BY created_at) = 1
            """,
            [keys],
        ).df()


def _progress_logger(total: int, log: Callable[[str], None]) -> Callable[[int], None]:
    started = time.perf_counter()
    last = [started]

    def report(done: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < PROGRESS_INTERVAL_S:
            return
        last[0] = now
        rate = done / (now - started) if now > started else 0.0
        remaining = (total - done) / rate if rate > 0 else float("nan")
        log(f"generated {done} of {total} answers, {rate:.2f} examples/s, about {remaining:.0f} s left")

    return report


def run_prompt_partition(
    spec: ExperimentSpec,
    dataset: DatasetSpec,
    model: PromptModelSpec,
    template: PromptTemplate,
    run: int,
    examples: pd.DataFrame,
    store: ResultsStore,
    partition_key: str,
    log: Callable[[str], None] = logger.info,
) -> pd.DataFrame:
    """Predictions for every example: one row per (example, model, template, run)."""
    settings = spec.prompting
    run_seed = settings.base_seed + run
    model_path = resolve_gguf(spec, model)
    model_sha256 = file_sha256(model_path)

    pending: list[PendingExample] = []
    for _, row in examples.iterrows():
        fields = {field: row[field] for field in dataset.text_fields}
        fields["label"] = int(row["label"])
        rendered = render(template, fields, seed=run_seed)
        messages = build_messages(rendered.prompt, rendered.answer_choices, model, settings.max_rationale_chars)
        grammar = answer_grammar(rendered.answer_choices, settings.max_rationale_chars)
        sampling = {
            "temperature": model.temperature,
            "max_tokens": settings.max_tokens,
            "grammar_sha256": hashlib.sha256(grammar.encode()).hexdigest(),
            "chat_format": model.chat_format,
        }
        seed = example_seed(run_seed, int(row["idx"]))
        pending.append(
            PendingExample(int(row["idx"]), int(row["label"]), messages, rendered.answer_choices, seed,
                           cache_key(model_sha256, messages, sampling, seed), grammar)
        )

    cached = read_cached_answers(store, model_sha256, [item.key for item in pending])
    cached_keys = set(cached["cache_key"]) if not cached.empty else set()
    missing = [item for item in pending if item.key not in cached_keys]
    log(f"{len(pending) - len(missing)} of {len(pending)} answers found in the cache, {len(missing)} to generate")

    if missing:
        generator = LlamaCppGenerator(model_path, settings.n_ctx, settings.n_threads, model.chat_format)
        report = _progress_logger(len(missing), log)
        stem = Path(partition_file_name(partition_key)).stem
        try:
            for start in range(0, len(missing), CACHE_CHUNK):
                chunk_rows = []
                for item in missing[start : start + CACHE_CHUNK]:
                    generation = generator.generate(
                        item.messages, model.temperature, item.seed, settings.max_tokens, item.grammar
                    )
                    chunk_rows.append(
                        {"cache_key": item.key, "model_sha256": model_sha256, "seed": item.seed,
                         "temperature": model.temperature, "created_at": pd.Timestamp.now(tz="UTC"),
                         "backend": "llama_cpp", **asdict(generation)}
                    )
                chunk_key = f"{_cache_prefix(model_sha256)}+{stem}+{start:06d}-{uuid.uuid4().hex[:8]}"
                store.write(CACHE_TABLE, chunk_key, pd.DataFrame(chunk_rows))
                report(start + len(chunk_rows))
        finally:
            generator.close()
        cached = read_cached_answers(store, model_sha256, [item.key for item in pending])

    by_key = cached.set_index("cache_key")
    provenance = provenance_columns(
        {"run_seed": run_seed, "max_rationale_chars": settings.max_rationale_chars, "max_tokens": settings.max_tokens,
         "temperature": model.temperature, "chat_format": model.chat_format, "model_path": str(model_path)}
    )
    missing_keys = {item.key for item in missing}
    rows = []
    for item, (_, example) in zip(pending, examples.iterrows()):
        answer = by_key.loc[item.key]
        parsed = parse_answer(str(answer["text"]), item.answer_choices)
        rows.append(
            {
                "dataset": dataset.id, "split": dataset.eval_split, "idx": item.idx,
                "model": model.name, "template": template.slug, "template_id": template.id,
                "run": run, "method": "generate", "seed": item.seed, "run_seed": run_seed,
                "temperature": model.temperature, "prompt": item.messages[-1]["content"],
                "answer_choices": json.dumps(item.answer_choices), "raw_output": answer["text"],
                "rationale": parsed.rationale, "label_text": parsed.label_text,
                "prediction": parsed.label_index, "label": item.label, "valid": parsed.valid,
                "invalid_reason": None if parsed.valid else parsed.reason,
                "finish_reason": answer["finish_reason"], "prompt_tokens": int(answer["prompt_tokens"]),
                "completion_tokens": int(answer["completion_tokens"]), "latency_s": float(answer["latency_s"]),
                "from_cache": item.key not in missing_keys, "cache_key": item.key, "model_sha256": model_sha256,
                **{field: example[field] for field in dataset.metadata_fields},
                **provenance,
            }
        )
    return pd.DataFrame(rows)
