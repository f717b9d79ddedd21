"""Run the contamination probe of one prompt model on the probed sentences.

For every sentence the model completes the first half greedily (temperature 0), once, and the
completion is compared with each condition's target continuation. The log-probability of each
target given the first half comes from one batched forward pass per sentence, with every
condition's target branched off the same prompt (as label scoring does with answer choices).
"""

from __future__ import annotations

import logging
import time

from .completion_llama import CompletionLlama, plain_messages
from .contamination import REAL, ProbeItem, common_prefix_words, exact_match, lcs_ratio
from .llama_batch import GenerationRequest, ScoreRequest

logger = logging.getLogger(__name__)

GREEDY_TEMPERATURE = 0.0


def score_target(generated: str, target: str) -> dict[str, object]:
    """Compare one completion with one target continuation: exact match, shared prefix words and LCS ratio."""
    return {
        "exact_match": exact_match(generated, target),
        "prefix_words": common_prefix_words(generated, target),
        "lcs_ratio": lcs_ratio(generated, target),
    }


def probe_model(engine: CompletionLlama, items: list[ProbeItem], seed: int, max_new_tokens: int) -> list[dict[str, object]]:
    """Return one row per (sentence, condition): prompt, target, completion, overlap scores and log-probabilities.

    Every request carries seed, although greedy decoding does not draw from it.
    """
    started = time.perf_counter()
    requests = [GenerationRequest(plain_messages(item.prompt), seed, None) for item in items]
    completions = dict(engine.generate(requests, GREEDY_TEMPERATURE, max_new_tokens))
    generated_s = time.perf_counter() - started

    conditions = [list(item.targets) for item in items]
    # A continuation follows the first half after a space, as it does in the sentence.
    scores = engine.score([
        ScoreRequest(plain_messages(item.prompt), [" " + item.targets[condition] for condition in names])
        for item, names in zip(items, conditions)
    ])
    logger.info("probed %d sentences with %s: %.1f s generating, %.1f s scoring", len(items), engine.model_path.name,
                generated_s, time.perf_counter() - started - generated_s)

    rows = []
    for position, (item, names, scored) in enumerate(zip(items, conditions, scores)):
        completion = completions[position]
        for choice, condition in enumerate(names):
            target = item.targets[condition]
            tokens = scored.choice_tokens[choice]
            rows.append({
                "idx": item.idx, "label": item.label, "condition": condition, "is_control": condition != REAL,
                "source_idx": item.sources[condition], "prompt": item.prompt, "target": target,
                "target_words": len(target.split()), "generated": completion.text,
                **score_target(completion.text, target),
                "logprob_sum": scored.scores[choice], "target_tokens": tokens,
                "logprob_per_token": scored.scores[choice] / tokens,
                "prompt_tokens": scored.prompt_tokens, "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason,
            })
    return rows
