"""Chat messages, the JSON answer grammar, per-example seeds and cache keys for prompted classification."""

from __future__ import annotations

import hashlib
import json

from .spec import PromptModelSpec

ANSWER_INSTRUCTION = (
    "Reply with only a JSON object. Give your reasoning first in at most {max_chars} characters, "
    'then the answer: {{"rationale": "<your reasoning>", "label": "<answer>"}}. '
    "The answer must be exactly one of: {choices}."
)


def build_messages(prompt: str, answer_choices: list[str], model: PromptModelSpec, max_chars: int) -> list[dict[str, str]]:
    """The chat messages for one example: the rendered template, then the answer-format instruction.

    The instruction goes into the user turn, because some chat formats (gemma) drop system messages.
    """
    choices = ", ".join(json.dumps(choice) for choice in answer_choices)
    instruction = ANSWER_INSTRUCTION.format(max_chars=max_chars, choices=choices)
    return [{"role": "user", "content": f"{prompt}\n\n{instruction}"}]


def build_score_messages(prompt: str) -> list[dict[str, str]]:
    """The chat messages for label scoring: the rendered template alone, with no answer-format
    instruction, as lm-evaluation-harness scores multiple-choice prompts. The answer choice is
    scored as the first words of the assistant turn."""
    return [{"role": "user", "content": prompt}]


def _gbnf_literal(text: str) -> str:
    # A GBNF string literal holding the JSON encoding of text.
    return json.dumps(json.dumps(text))


def answer_grammar(answer_choices: list[str], max_rationale_chars: int) -> str:
    """A GBNF grammar for `{"rationale": "...", "label": "<choice>"}` with a bounded rationale.

    The rationale is limited to max_rationale_chars JSON string characters, so a max_tokens of at
    least that many plus the fixed parts always leaves room to close the object.
    """
    if not answer_choices:
        raise ValueError("a template without answer choices cannot be used for classification")
    labels = " | ".join(_gbnf_literal(choice) for choice in answer_choices)
    return "\n".join(
        [
            'root ::= "{\\"rationale\\": \\"" rationale-char{0,' + str(max_rationale_chars) + '} "\\", \\"label\\": " label "}"',
            'rationale-char ::= [^"\\\\\\x00-\\x1f] | "\\\\" ["\\\\/bfnrt]',
            f"label ::= {labels}",
        ]
    )


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
