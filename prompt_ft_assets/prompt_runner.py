"""Run one prompted partition: render, reuse cached answers, compute the missing ones, parse, and
build the rows.

Two methods share this flow. `generate` samples a JSON answer per example in the run's answer
format (rationale first by default) at the run's temperature, batched in this process by llama.cpp
or sent to an OpenAI-compatible server. `score` computes the log-probability of each answer
choice after the prompt and predicts the most likely choice.

Answers are written to the prediction cache in small chunks as they finish. A run that is
killed keeps every flushed chunk, and the rerun computes only the examples whose cache key is
missing, so each example ends up exactly once in the partition's predictions. The cache key
holds the model file's sha256, the messages, the seed and every setting that changes an answer,
the backend's kind and settings included.

With prompting.share_runs, a generate partition also answers the other runs of its (model,
template, shots, temperature, format) in the same call. A prompt is then decoded once for all
the runs of an example (llama_batch.py), and the sibling partitions find their answers in the
cache. A lock per run group keeps two sibling partitions from computing the same runs at once.
Each cached answer stores busy_s, the wall seconds since the previous answer of its call
finished, so the cost tables can split shared work between runs without counting it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from .answer_formats import DEFAULT_ANSWER_FORMAT, AnswerFormat, parse_answer_format
from .llama_batch import ChoiceScores, GenerationRequest, ScoreRequest
from .parsing import INVALID_LABEL, parse_answer
from .prompt_backends import BackendPlan, open_backend, plan_backend
from .prompt_shots import ShotDraw, render_shots
from .prompting import Shot, answer_grammar, build_messages, build_score_messages, cache_key, example_seed
from .provenance import provenance_columns
from .spec import DatasetSpec, ExperimentSpec, PromptModelSpec
from .store import ResultsStore, partition_file_name
from .templates import PromptTemplate, render

logger = logging.getLogger(__name__)

CACHE_TABLE = "prediction_cache"
# Answers are flushed to the cache every this many examples, so a kill loses at most this many
# finished answers plus the ones being decoded.
CACHE_CHUNK = 8
# Examples scored per call; each call's scores are flushed to the cache.
SCORE_CHUNK = 64
PROGRESS_INTERVAL_S = 15.0
GENERATE = "generate"
SCORE = "score"
REASON_NON_FINITE = "non_finite_scores"


@dataclass(frozen=True)
class PendingExample:
    idx: int
    label: int
    messages: list[dict[str, str]]
    answer_choices: list[str]
    seed: int
    key: str
    grammar: str | None


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
        log(f"answered {done} of {total} examples, {rate:.2f} examples/s, about {remaining:.0f} s left")

    return report


class CacheWriter:
    """Collects finished answers and writes them to the cache table in chunks of `chunk` rows."""

    def __init__(self, store: ResultsStore, model_sha256: str, partition_key: str, chunk: int):
        self.store = store
        self.prefix = _cache_prefix(model_sha256)
        self.stem = Path(partition_file_name(partition_key)).stem
        self.chunk = chunk
        self.rows: list[dict[str, object]] = []
        self.written = 0

    def add(self, row: dict[str, object]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        chunk_key = f"{self.prefix}+{self.stem}+{self.written:06d}-{uuid.uuid4().hex[:8]}"
        self.store.write(CACHE_TABLE, chunk_key, pd.DataFrame(self.rows))
        self.written += len(self.rows)
        self.rows = []


def _pending_examples(
    spec: ExperimentSpec, dataset: DatasetSpec, model: PromptModelSpec, template: PromptTemplate,
    examples: pd.DataFrame, plan: BackendPlan, method: str, run_seed: int, shots: Sequence[Shot] = (),
    temperature: float | None = None, answer_format: AnswerFormat | None = None,
) -> list[PendingExample]:
    """The request and cache key of every example. The messages (instruction and k-shot answers) and
    the grammar follow the answer format, and the sampling settings hold the temperature, so runs
    of different formats or temperatures never share a cache key. None takes the model's default
    temperature and the default format."""
    settings = spec.prompting
    temperature = model.temperature if temperature is None else temperature
    answer_format = answer_format or parse_answer_format(DEFAULT_ANSWER_FORMAT)
    rationale_chars = answer_format.rationale_bound(settings.max_rationale_chars)
    pending = []
    for _, row in examples.iterrows():
        fields = {field: row[field] for field in dataset.text_fields}
        fields["label"] = int(row["label"])
        rendered = render(template, fields, seed=run_seed)
        if method == SCORE:
            messages = build_score_messages(rendered.prompt, shots)
            grammar = None
            seed = 0
            sampling = {"method": SCORE, "choices": rendered.answer_choices, "chat_format": model.chat_format,
                        "backend": plan.cache_settings}
        else:
            messages = build_messages(rendered.prompt, rendered.answer_choices, model, settings.max_rationale_chars, shots,
                                      answer_format)
            grammar = answer_grammar(rendered.answer_choices, settings.max_rationale_chars, answer_format)
            seed = example_seed(run_seed, int(row["idx"]))
            sampling = {
                "temperature": temperature,
                "max_tokens": settings.max_tokens_for(rationale_chars),
                "grammar_sha256": hashlib.sha256(grammar.encode()).hexdigest(),
                "chat_format": model.chat_format,
                "backend": plan.cache_settings,
            }
        pending.append(
            PendingExample(int(row["idx"]), int(row["label"]), messages, rendered.answer_choices, seed,
                           cache_key(plan.model_sha256, messages, sampling, seed), grammar)
        )
    return pending


def _generation_rows(backend, missing: list[PendingExample], temperature: float, max_tokens: int,
                     plan: BackendPlan) -> Iterable[dict[str, object]]:
    requests = [GenerationRequest(item.messages, item.seed, item.grammar) for item in missing]
    for index, generation in backend.generate(requests, temperature, max_tokens):
        item = missing[index]
        yield {"cache_key": item.key, "model_sha256": plan.model_sha256, "seed": item.seed,
               "temperature": temperature, "created_at": pd.Timestamp.now(tz="UTC"),
               "backend": plan.kind, "method": GENERATE, "choice_scores": None, **asdict(generation)}


def _score_rows(backend, missing: list[PendingExample], plan: BackendPlan) -> Iterable[dict[str, object]]:
    for start in range(0, len(missing), SCORE_CHUNK):
        chunk = missing[start : start + SCORE_CHUNK]
        results: list[ChoiceScores] = backend.score([ScoreRequest(item.messages, item.answer_choices) for item in chunk])
        for item, result in zip(chunk, results):
            yield {"cache_key": item.key, "model_sha256": plan.model_sha256, "seed": item.seed, "temperature": 0.0,
                   "created_at": pd.Timestamp.now(tz="UTC"), "backend": plan.kind, "method": SCORE,
                   "choice_scores": json.dumps(list(result.scores)), "text": item.answer_choices[result.best],
                   "finish_reason": None, "prompt_tokens": result.prompt_tokens, "completion_tokens": 0,
                   "latency_s": result.latency_s}


def _answer_missing(spec, model, plan, missing, method, store, partition_key, log, temperature, max_tokens) -> None:
    """Compute the missing answers and write them to the cache as they finish."""
    backend = open_backend(spec, model, plan)
    writer = CacheWriter(store, plan.model_sha256, partition_key, SCORE_CHUNK if method == SCORE else CACHE_CHUNK)
    report = _progress_logger(len(missing), log)
    last_finish = time.perf_counter()
    try:
        rows = (_score_rows(backend, missing, plan) if method == SCORE
                else _generation_rows(backend, missing, temperature, max_tokens, plan))
        for row in rows:
            # The seconds since the previous answer finished: summed over a call, the call's busy
            # time, however many answers were decoded at once.
            now = time.perf_counter()
            row["busy_s"], last_finish = now - last_finish, now
            writer.add(row)
            report(writer.written + len(writer.rows))
    finally:
        # Answers finished before an error are kept, so the rerun does not compute them again.
        writer.flush()
        backend.close()


def _uncached(pending: list[PendingExample], cached: pd.DataFrame) -> list[PendingExample]:
    """Return the pending examples whose cache key has no stored answer."""
    stored = set(cached["cache_key"]) if not cached.empty else set()
    return [item for item in pending if item.key not in stored]


def _parse_scores(row: pd.Series, choices: list[str]) -> dict[str, object]:
    scores = json.loads(row["choice_scores"])
    if len(scores) != len(choices) or not all(math.isfinite(score) for score in scores):
        return {"rationale": None, "label_text": None, "prediction": INVALID_LABEL, "valid": False,
                "invalid_reason": REASON_NON_FINITE, "format_followed": None}
    best = max(range(len(scores)), key=lambda i: scores[i])
    return {"rationale": None, "label_text": choices[best], "prediction": best, "valid": True, "invalid_reason": None,
            "format_followed": None}


def _parse_generation(row: pd.Series, choices: list[str], answer_format: AnswerFormat) -> dict[str, object]:
    parsed = parse_answer(str(row["text"]), choices, answer_format)
    return {"rationale": parsed.rationale, "label_text": parsed.label_text, "prediction": parsed.label_index,
            "valid": parsed.valid, "invalid_reason": None if parsed.valid else parsed.reason,
            "format_followed": parsed.format_followed}


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
    method: str = GENERATE,
    shots: ShotDraw | None = None,
    temperature: float | None = None,
    answer_format: str = DEFAULT_ANSWER_FORMAT,
    sibling_runs: Sequence[int] = (),
) -> pd.DataFrame:
    """Predictions for every example: one row per (example, model, template, method, shots, temperature,
    answer format, run).

    For `score`, choice_scores holds the summed log-probability of each answer choice (JSON list
    in answer-choice order) and the prediction is the highest; run is 0 and no sampling happens.
    shots holds the labeled train examples shown before each example (prompt_shots.draw_shots);
    None is zero-shot. temperature None samples at the model's default, and answer_format names the
    JSON layout of `generate` answers (answer_formats.py); `score` ignores both.

    sibling_runs lists other runs of the same zero-shot generate setting whose missing answers are
    computed in the same call (see the module docstring); their rows go to the cache only.
    """
    if method not in (GENERATE, SCORE):
        raise ValueError(f"prompting method {method!r} is unknown; use 'generate' or 'score'")
    settings = spec.prompting
    run_seed = settings.base_seed + run
    default_temperature = temperature is None or method == SCORE
    temperature = model.temperature if temperature is None else temperature
    answer_layout = parse_answer_format(answer_format)
    max_tokens = settings.max_tokens_for(answer_layout.rationale_bound(settings.max_rationale_chars))
    shots = shots or ShotDraw(0, 0, examples.iloc[0:0])
    rendered_shots = render_shots(template, shots.rows, dataset.text_fields, run_seed)
    plan = plan_backend(spec, model)
    pending = _pending_examples(spec, dataset, model, template, examples, plan, method, run_seed, rendered_shots,
                                temperature, answer_layout)

    keys = [item.key for item in pending]
    cached = read_cached_answers(store, plan.model_sha256, keys)
    missing = _uncached(pending, cached)
    log(f"{len(pending) - len(missing)} of {len(pending)} answers found in the cache, {len(missing)} to compute "
        f"({method}, {plan.kind})")
    siblings = sorted(set(sibling_runs) - {run}) if method == GENERATE and shots.k == 0 else []
    if missing and siblings:
        group = f"{dataset.id}|{model.name}|{template.slug}|{temperature}|{answer_layout.name}"
        # A sibling partition that computed this run's answers while this one waited leaves
        # nothing to do, so the cache is read again under the lock.
        with store.partition_lock("prompt_run_group", group, wait=True, on_wait=log):
            missing = _uncached(pending, read_cached_answers(store, plan.model_sha256, keys))
            if missing:
                others = [item for sibling in siblings for item in _pending_examples(
                    spec, dataset, model, template, examples, plan, method, settings.base_seed + sibling,
                    rendered_shots, temperature, answer_layout)]
                others = _uncached(others, read_cached_answers(store, plan.model_sha256, [item.key for item in others]))
                log(f"answering the {len(others)} missing answers of runs {siblings} in the same call "
                    "(prompting.share_runs), so each prompt is decoded once for all runs")
                _answer_missing(spec, model, plan, missing + others, method, store, partition_key, log, temperature,
                                max_tokens)
        cached = read_cached_answers(store, plan.model_sha256, keys)
    elif missing:
        _answer_missing(spec, model, plan, missing, method, store, partition_key, log, temperature, max_tokens)
        cached = read_cached_answers(store, plan.model_sha256, keys)

    by_key = cached.set_index("cache_key")
    absent = [item.idx for item in pending if item.key not in by_key.index]
    if absent:
        raise RuntimeError(f"answers for examples {absent[:10]} are missing from the cache after computing them; "
                           "materialize the partition again")
    provenance = provenance_columns(
        {"method": method, "run_seed": run_seed, "max_rationale_chars": settings.max_rationale_chars,
         "max_tokens": max_tokens, "temperature": temperature, "answer_format": answer_layout.name,
         "rationale_bound": answer_layout.rationale_bound(settings.max_rationale_chars), "chat_format": model.chat_format,
         "model_location": plan.location, "backend": plan.cache_settings, "parallel": model.backend.parallel,
         **shots.columns()}
    )
    missing_keys = {item.key for item in missing}
    rows = []
    for item, (_, example) in zip(pending, examples.iterrows()):
        answer = by_key.loc[item.key]
        parsed = (_parse_scores(answer, item.answer_choices) if method == SCORE
                  else _parse_generation(answer, item.answer_choices, answer_layout))
        rows.append(
            {
                "dataset": dataset.id, "split": dataset.eval_split, "idx": item.idx,
                "model": model.name, "template": template.slug, "template_id": template.id,
                "run": run, "method": method, "seed": item.seed, "run_seed": run_seed, **shots.columns(),
                "temperature": temperature if method == GENERATE else 0.0,
                # False for a run of prompting.temperatures at another value than the model's default.
                "temperature_is_default": default_temperature,
                "answer_format": answer_layout.name if method == GENERATE else None,
                "prompt": item.messages[-1]["content"],
                "answer_choices": json.dumps(item.answer_choices), "raw_output": answer["text"],
                **parsed,
                "label": item.label,
                "choice_scores": answer["choice_scores"] if method == SCORE else None,
                "finish_reason": answer["finish_reason"], "prompt_tokens": int(answer["prompt_tokens"]),
                "completion_tokens": int(answer["completion_tokens"]), "latency_s": float(answer["latency_s"]),
                # This answer's share of its call's busy seconds; NaN for answers cached before busy_s existed.
                "busy_s": float(answer["busy_s"]) if "busy_s" in answer and pd.notna(answer["busy_s"]) else math.nan,
                # When the answer was computed (the cache row's created_at), for busy-time cost estimates.
                "finished_at": answer["created_at"],
                "from_cache": item.key not in missing_keys, "cache_key": item.key, "model_sha256": plan.model_sha256,
                "backend": plan.kind,
                **{field: example[field] for field in dataset.metadata_fields},
                **provenance,
            }
        )
    return pd.DataFrame(rows)
