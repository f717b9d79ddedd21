"""Chat messages, the JSON answer grammar, per-example seeds and cache keys for prompted classification."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from .answer_formats import (
    DEFAULT_ANSWER_FORMAT,
    RATIONALE_FIRST_INSTRUCTION,
    AnswerFormat,
    answer_instruction,
    example_answer,
    format_grammar,
    parse_answer_format,
)
from .spec import PromptModelSpec

# The default (rationale-first) format's instruction. answer_formats.py contains the other formats' texts.
ANSWER_INSTRUCTION = RATIONALE_FIRST_INSTRUCTION


@dataclass(frozen=True)
class Shot:
    """One labeled train example shown before the evaluation example in k-shot prompting."""

    prompt: str
    answer: str  # the gold answer choice


def shot_answer(answer: str, answer_format: AnswerFormat | None = None) -> str:
    """A generate shot's assistant turn: the JSON answer in the run's format with the gold label and an
    empty rationale, because train examples carry no rationale. It matches the answer grammar's layout."""
    return example_answer(answer_format or parse_answer_format(DEFAULT_ANSWER_FORMAT), answer)


def _shot_turns(shots: Sequence[Shot], generate: bool, answer_format: AnswerFormat | None = None) -> list[dict[str, str]]:
    turns = []
    for shot in shots:
        turns.append({"role": "user", "content": shot.prompt})
        turns.append({"role": "assistant", "content": shot_answer(shot.answer, answer_format) if generate else shot.answer})
    return turns


def build_messages(
    prompt: str, answer_choices: list[str], model: PromptModelSpec, max_chars: int, shots: Sequence[Shot] = (),
    answer_format: AnswerFormat | None = None,
) -> list[dict[str, str]]:
    """The chat messages for one example: the rendered template, then the answer-format instruction.

    answer_format picks the instruction (answer_formats.py); None is the default rationale-first
    format, and max_chars is prompting.max_rationale_chars, which a bounded format lowers.

    The instruction goes into the user turn, because some chat formats (gemma) drop system messages.
    Each k-shot example comes first as a user turn with its rendered template and an assistant turn
    with its JSON answer, so the last turn is the zero-shot message unchanged.
    """
    answer_format = answer_format or parse_answer_format(DEFAULT_ANSWER_FORMAT)
    instruction = answer_instruction(answer_format, answer_choices, max_chars)
    return [*_shot_turns(shots, True, answer_format), {"role": "user", "content": f"{prompt}\n\n{instruction}"}]


def build_score_messages(prompt: str, shots: Sequence[Shot] = ()) -> list[dict[str, str]]:
    """The chat messages for label scoring: the rendered template alone, with no answer-format
    instruction, as lm-evaluation-harness scores multiple-choice prompts. The answer choice is
    scored as the first words of the assistant turn, so each k-shot example comes first as a user
    turn and an assistant turn that contains its gold answer choice alone."""
    return [*_shot_turns(shots, generate=False), {"role": "user", "content": prompt}]


def answer_grammar(answer_choices: list[str], max_rationale_chars: int, answer_format: AnswerFormat | None = None) -> str:
    """Build a GBNF grammar for the format's JSON answer, by default `{"rationale": "...", "label": "<choice>"}`.

    The rationale is limited to the format's bound in JSON string characters (max_rationale_chars
    unless the format sets a lower one), so a max_tokens of at least that many plus the fixed parts
    always leaves room to close the object.
    """
    return format_grammar(answer_format or parse_answer_format(DEFAULT_ANSWER_FORMAT), answer_choices, max_rationale_chars)


def example_seed(run_seed: int, example_idx: int) -> int:
    """A sampling seed for one example of one run, stable across processes and Python versions."""
    digest = hashlib.sha256(f"{run_seed}:{example_idx}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def cache_key(model_sha256: str, messages: list[dict[str, str]], sampling: dict[str, object], seed: int) -> str:
    """The content address of one answer: model file, full prompt, sampling settings and seed.

    sampling holds everything else that changes the answer: the method, sampler settings, the
    grammar's hash, the chat format and the backend's kind and settings.
    """
    payload = json.dumps(
        {"model": model_sha256, "messages": messages, "sampling": sampling, "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()
