"""Answer formats of generated answers: which JSON keys the model writes, in which order, and how
long its rationale may be.

A format name lists the keys in answer order:

- `rationale_label`: rationale first, then the label (the pilot's format and the default);
- `label`: the label alone, with no rationale;
- `label_rationale`: the label first, then the rationale;
- `rationale<N>_label`, for example `rationale40_label`: rationale first with at most N characters,
  where N is below prompting.max_rationale_chars.

The instruction text, the GBNF grammar, the k-shot answers and the answer parsing all read the
format from here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

RATIONALE_KEY = "rationale"
LABEL_KEY = "label"

DEFAULT_ANSWER_FORMAT = "rationale_label"
LABEL_ONLY = "label"
LABEL_FIRST = "label_rationale"
_BOUNDED = re.compile(r"^rationale([1-9]\d*)_label$")
FORMAT_NAMES_HELP = "'rationale_label', 'label', 'label_rationale' or 'rationale<N>_label' (for example 'rationale40_label')"


class AnswerFormatError(ValueError):
    """An answer format name that is not one of the known formats."""


@dataclass(frozen=True)
class AnswerFormat:
    name: str
    # The JSON keys of an answer, in the order the model writes them.
    keys: tuple[str, ...]
    # The rationale's maximum length in characters. None takes prompting.max_rationale_chars, and 0 means no rationale.
    rationale_chars: int | None

    def rationale_bound(self, max_rationale_chars: int) -> int:
        """Return the maximum length of this format's rationale, in characters."""
        return max_rationale_chars if self.rationale_chars is None else self.rationale_chars


def parse_answer_format(name: str) -> AnswerFormat:
    """Return the answer format of a name, or raise AnswerFormatError naming the valid ones."""
    if name == DEFAULT_ANSWER_FORMAT:
        return AnswerFormat(name, (RATIONALE_KEY, LABEL_KEY), None)
    if name == LABEL_ONLY:
        return AnswerFormat(name, (LABEL_KEY,), 0)
    if name == LABEL_FIRST:
        return AnswerFormat(name, (LABEL_KEY, RATIONALE_KEY), None)
    bounded = _BOUNDED.match(name)
    if bounded is not None:
        return AnswerFormat(name, (RATIONALE_KEY, LABEL_KEY), int(bounded.group(1)))
    raise AnswerFormatError(f"answer format {name!r} is unknown; use {FORMAT_NAMES_HELP}")


# The default format's text is the pilot's instruction, unchanged, so its messages and cache keys stay as they were.
RATIONALE_FIRST_INSTRUCTION = (
    "Reply with only a JSON object. Give your reasoning first in at most {max_chars} characters, "
    'then the answer: {{"rationale": "<your reasoning>", "label": "<answer>"}}. '
    "The answer must be exactly one of: {choices}."
)
LABEL_ONLY_INSTRUCTION = (
    'Reply with only a JSON object that holds the answer: {{"label": "<answer>"}}. '
    "The answer must be exactly one of: {choices}."
)
LABEL_FIRST_INSTRUCTION = (
    "Reply with only a JSON object. Give the answer first, then your reasoning in at most {max_chars} characters: "
    '{{"label": "<answer>", "rationale": "<your reasoning>"}}. '
    "The answer must be exactly one of: {choices}."
)


def answer_instruction(answer_format: AnswerFormat, answer_choices: list[str], max_rationale_chars: int) -> str:
    """Return the instruction, placed after the rendered template, that requests a JSON answer in this format."""
    choices = ", ".join(json.dumps(choice) for choice in answer_choices)
    max_chars = answer_format.rationale_bound(max_rationale_chars)
    if answer_format.keys == (LABEL_KEY,):
        return LABEL_ONLY_INSTRUCTION.format(choices=choices)
    if answer_format.keys[0] == LABEL_KEY:
        return LABEL_FIRST_INSTRUCTION.format(max_chars=max_chars, choices=choices)
    return RATIONALE_FIRST_INSTRUCTION.format(max_chars=max_chars, choices=choices)


def _gbnf_literal(text: str) -> str:
    # A GBNF string literal holding the JSON encoding of text.
    return json.dumps(json.dumps(text))


# One character of a JSON string: anything but a quote, a backslash or a control character, or an escape.
_RATIONALE_CHAR_RULE = 'rationale-char ::= [^"\\\\\\x00-\\x1f] | "\\\\" ["\\\\/bfnrt]'


def format_grammar(answer_format: AnswerFormat, answer_choices: list[str], max_rationale_chars: int) -> str:
    """Build a GBNF grammar for exactly the JSON layout of the format, with a bounded rationale.

    The layout is the one json.dumps writes (", " and ": " separators), which the k-shot answers use too.
    """
    if not answer_choices:
        raise ValueError("a template without answer choices cannot be used for classification")
    labels = " | ".join(_gbnf_literal(choice) for choice in answer_choices)
    rationale = 'rationale-char{0,' + str(answer_format.rationale_bound(max_rationale_chars)) + '}'
    if answer_format.keys == (LABEL_KEY,):
        rules = ['root ::= "{\\"label\\": " label "}"']
    elif answer_format.keys[0] == LABEL_KEY:
        rules = ['root ::= "{\\"label\\": " label ", \\"rationale\\": \\"" ' + rationale + ' "\\"}"', _RATIONALE_CHAR_RULE]
    else:
        rules = ['root ::= "{\\"rationale\\": \\"" ' + rationale + ' "\\", \\"label\\": " label "}"', _RATIONALE_CHAR_RULE]
    return "\n".join([*rules, f"label ::= {labels}"])


def example_answer(answer_format: AnswerFormat, label: str, rationale: str = "") -> str:
    """Serialize an answer in this format, as a k-shot example's assistant turn shows it."""
    values = {LABEL_KEY: label, RATIONALE_KEY: rationale}
    return json.dumps({key: values[key] for key in answer_format.keys})
