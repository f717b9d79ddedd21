"""Contamination probe, pure parts: sentence halves, control continuations, overlap scores and the
per-model comparison of real sentences against controls.

The probe gives a model the first half of an evaluation sentence (its first n // 2 whitespace
tokens) as a plain completion prompt and checks how much of the true second half it reproduces.
A model that saw the sentence in training should reproduce it more often than a continuation it
cannot have seen. The controls are built from the same sentences, so they share vocabulary, length
and style with the real continuations:

- `shuffled`: the true second half with its words in a seeded random order;
- `swapped`: the second half of another sampled sentence (a seeded derangement, so no sentence
  keeps its own).

Every condition of an example shares its prompt, so one greedy continuation per example is
compared with each condition's target. A real second half is also the more fluent and coherent
continuation of its prompt, so even a model that never saw the sentence reproduces it a little
more and gives it a higher log-probability. The flag therefore uses exact reproduction of the
whole second half, which coherence alone rarely gives, and the log-probability gap is reported
without a flag.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .datasets_io import stratified_sample
from .statistics import bootstrap_mean_interval

REAL = "real"
SHUFFLED = "shuffled"
SWAPPED = "swapped"
CONTROLS = (SHUFFLED, SWAPPED)
# Each control draws from its own random stream, so adding or removing a control leaves the others unchanged.
_CONTROL_STREAMS = {SHUFFLED: 1, SWAPPED: 2}
# Stripped from both ends of a word before comparing, with the typographic quotes and ellipsis.
_WORD_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d\u2026"
# Per-example scores compared between real and control continuations, in table order.
PROBE_SCORES = ("exact_match", "lcs_ratio", "logprob_per_token")


class ProbeInputError(ValueError):
    """Evaluation sentences that cannot be probed, with the count and the fix."""


@dataclass(frozen=True)
class Halves:
    """A sentence split at its middle whitespace token: the prompt and the true continuation."""

    prompt: str
    continuation: list[str]


@dataclass(frozen=True)
class ProbeItem:
    """One probed sentence: its prompt and the target continuation of each condition.

    targets maps a condition (real, shuffled, swapped) to its continuation text, and sources
    maps it to the idx of the sentence that continuation came from.
    """

    idx: int
    label: int
    prompt: str
    targets: dict[str, str] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)


def normalize_words(text: str) -> list[str]:
    """Lowercase the whitespace tokens of text, strip punctuation from their ends and drop tokens left empty."""
    words = (token.strip(_WORD_PUNCTUATION).lower() for token in text.split())
    return [word for word in words if word]


def split_sentence(text: str, min_words: int) -> Halves | None:
    """Split text into its first n // 2 whitespace tokens and the rest.

    Returns None when the text has fewer than min_words tokens or its second half has no word
    left after normalize_words (only punctuation), because such a sentence cannot be probed.
    """
    words = text.split()
    if len(words) < max(min_words, 2):
        return None
    cut = len(words) // 2
    continuation = words[cut:]
    if not normalize_words(" ".join(continuation)):
        return None
    return Halves(" ".join(words[:cut]), continuation)


def shuffle_words(words: list[str], rng: np.random.Generator) -> list[str]:
    """Return words in a random order that differs from the original whenever the words are not all equal.

    A permutation that happens to keep the order is replaced by a rotation by one word.
    """
    shuffled = [words[i] for i in rng.permutation(len(words))]
    if shuffled == words:
        shuffled = words[1:] + words[:1]
    return shuffled


def derangement(size: int, rng: np.random.Generator) -> np.ndarray:
    """Return a random permutation without fixed points (partner[i] != i), one cycle through all positions."""
    if size < 2:
        raise ProbeInputError(f"swapping halves needs at least 2 sentences, got {size}; raise contamination.examples")
    order = rng.permutation(size)
    partner = np.empty(size, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def separate_equal_targets(partner: np.ndarray, targets: list[str]) -> np.ndarray:
    """Swap partners so that no sentence gets a swapped continuation equal to its own second half.

    Different sentences can end in the same words. Exchanging the partners of two sentences keeps
    the permutation free of fixed points. A sentence is left as it is when no exchange helps.
    """
    partner = partner.copy()
    for i in range(len(partner)):
        if targets[partner[i]] != targets[i]:
            continue
        for j in range(len(partner)):
            mine, theirs = partner[j], partner[i]
            if j != i and mine != i and theirs != j and targets[mine] != targets[i] and targets[theirs] != targets[j]:
                partner[i], partner[j] = mine, theirs
                break
    return partner


def build_probe_items(
    evaluation: pd.DataFrame, text_field: str, examples: int, seed: int, min_words: int, controls: list[str]
) -> list[ProbeItem]:
    """Draw the probed sentences and build every condition's continuation.

    evaluation contains the whole evaluation split (columns idx, label and text_field). Repeated
    sentences and sentences with fewer than min_words whitespace tokens are dropped first. From
    the rest, a sample of `examples` rows stratified by label is drawn with seed (all of them when
    fewer remain). The controls are drawn with seed too, each from its own stream.
    """
    # A sentence that occurs twice in the split is probed once, under its first idx.
    frame = evaluation.sort_values("idx").drop_duplicates(text_field).reset_index(drop=True)
    halves = [split_sentence(str(text), min_words) for text in frame[text_field]]
    eligible = frame[[half is not None for half in halves]].reset_index(drop=True)
    halves = [half for half in halves if half is not None]
    if len(eligible) < 2:
        raise ProbeInputError(
            f"only {len(eligible)} of {len(frame)} evaluation sentences have at least {min_words} whitespace tokens; "
            "lower contamination.min_words"
        )
    chosen = stratified_sample(eligible["label"].to_numpy(), examples, seed)
    sample = eligible.iloc[chosen].reset_index(drop=True)
    halves = [halves[i] for i in chosen]

    items = [
        ProbeItem(int(row.idx), int(row.label), half.prompt, {REAL: " ".join(half.continuation)}, {REAL: int(row.idx)})
        for row, half in zip(sample.itertuples(index=False), halves)
    ]
    if SHUFFLED in controls:
        rng = np.random.default_rng([seed, _CONTROL_STREAMS[SHUFFLED]])
        for item, half in zip(items, halves):
            item.targets[SHUFFLED] = " ".join(shuffle_words(half.continuation, rng))
            item.sources[SHUFFLED] = item.idx
    if SWAPPED in controls:
        partner = derangement(len(items), np.random.default_rng([seed, _CONTROL_STREAMS[SWAPPED]]))
        partner = separate_equal_targets(partner, [" ".join(normalize_words(item.targets[REAL])) for item in items])
        for item, other in zip(items, partner):
            item.targets[SWAPPED] = items[other].targets[REAL]
            item.sources[SWAPPED] = items[other].idx
    return items


def exact_match(generated: str, target: str) -> bool:
    """True when the generated text starts with every normalized word of target, in order."""
    target_words = normalize_words(target)
    return bool(target_words) and normalize_words(generated)[: len(target_words)] == target_words


def common_prefix_words(generated: str, target: str) -> int:
    """Count the normalized words that generated and target share from their start."""
    count = 0
    for produced, expected in zip(normalize_words(generated), normalize_words(target)):
        if produced != expected:
            break
        count += 1
    return count


def lcs_ratio(generated: str, target: str) -> float:
    """Return the longest common subsequence of words over the target's word count, like ROUGE-L recall.

    The generated words are cut to the target's length first, so a long continuation cannot cover
    the target by chance. 1.0 means the words of target came out in order, and 0.0 that none did.
    """
    target_words = normalize_words(target)
    if not target_words:
        return 0.0
    produced = normalize_words(generated)[: len(target_words)]
    previous = [0] * (len(target_words) + 1)
    for word in produced:
        current = [0] * (len(target_words) + 1)
        for j, expected in enumerate(target_words, start=1):
            current[j] = previous[j - 1] + 1 if word == expected else max(previous[j], current[j - 1])
        previous = current
    return previous[-1] / len(target_words)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of real minus control over paired examples, with a percentile bootstrap interval."""

    real_mean: float
    control_mean: float
    difference: float
    low: float
    high: float
    n: int


def paired_difference(real, control, seed: int, resamples: int) -> PairedDifference:
    """Compare two scores of the same examples: the bootstrap resamples examples, keeping each pair together."""
    real = np.asarray(real, dtype=float)
    control = np.asarray(control, dtype=float)
    if real.shape != control.shape:
        raise ValueError(f"real and control scores must be paired, got {real.size} and {control.size} values")
    interval = bootstrap_mean_interval(real - control, seed=seed, resamples=resamples)
    return PairedDifference(float(real.mean()), float(control.mean()), interval.estimate, interval.low, interval.high,
                            interval.n)


def summarize_probe(rows: pd.DataFrame, seed: int, resamples: int) -> pd.DataFrame:
    """Summarize the probe rows with one row per (dataset, model, control): each score's real and control
    means and their paired difference with a 95% bootstrap interval.

    flag_reproduced holds when the interval of the exact-match difference lies above 0, that is,
    when the real second halves are reproduced clearly more often than the control's.
    """
    if rows.empty:
        return pd.DataFrame()
    summary = []
    for (dataset, model), group in rows.groupby(["dataset", "model"], sort=True):
        real = group[group["condition"] == REAL].set_index("idx").sort_index()
        for control in sorted(set(group["condition"]) - {REAL}):
            paired = group[group["condition"] == control].set_index("idx").loc[real.index]
            row: dict[str, object] = {
                "dataset": dataset, "model": model, "control": control, "n_examples": len(real),
                "model_sha256": str(real["model_sha256"].iloc[0]),
            }
            for score in PROBE_SCORES:
                result = paired_difference(real[score].astype(float), paired[score].astype(float), seed, resamples)
                row.update({
                    f"real_{score}": result.real_mean, f"control_{score}": result.control_mean,
                    f"{score}_difference": result.difference, f"{score}_difference_low": result.low,
                    f"{score}_difference_high": result.high,
                })
            row["flag_reproduced"] = bool(row["exact_match_difference_low"] > 0.0)
            summary.append(row)
    return pd.DataFrame(summary)
