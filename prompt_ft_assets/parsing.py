"""Parse a model's JSON answer into a rationale and a class index.

The expected answer is `{"rationale": "...", "label": "<answer choice>"}`, or another layout of an
answer format (answer_formats.py); any key order is read, and format_followed records whether
the keys are exactly the format's, in its order. Parsing never raises:
an answer that cannot be mapped to exactly one answer choice is kept, marked invalid and given a
reason, so that invalid answers are counted as wrong predictions instead of being dropped.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any

from .answer_formats import DEFAULT_ANSWER_FORMAT, AnswerFormat, parse_answer_format

INVALID_LABEL = -1

# Reasons stored with every answer; "ok" is the only valid one.
REASON_OK = "ok"
REASON_EMPTY = "empty"
REASON_TRUNCATED = "truncated_json"
REASON_NOT_JSON = "not_json"
REASON_NOT_OBJECT = "json_not_object"
REASON_NO_LABEL = "missing_label_key"
REASON_LABEL_NOT_STRING = "label_not_string"
REASON_UNKNOWN_LABEL = "label_not_in_choices"

_STRIP_CHARS = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019"


@dataclass(frozen=True)
class ParsedAnswer:
    rationale: str | None
    label_text: str | None
    label_index: int
    valid: bool
    reason: str
    extra_keys: tuple[str, ...] = ()
    # True when the JSON object has exactly the answer format's keys, in its order.
    format_followed: bool = False


def normalize_label(text: str) -> str:
    """Lowercase and strip surrounding white space, quotes and punctuation: ' "Yes." ' -> 'yes'."""
    return text.strip(_STRIP_CHARS).lower()


def _load_object(text: str) -> tuple[Any, str | None]:
    """Return the decoded JSON value and None, or None and the reason it failed."""
    stripped = text.strip()
    if not stripped:
        return None, REASON_EMPTY
    try:
        return json.loads(stripped), None
    except json.JSONDecodeError:
        pass
    except RecursionError:  # nesting deeper than Python's recursion limit
        return None, REASON_NOT_JSON
    # Models often wrap the object in prose or a code fence: try the outermost braces.
    start, end = stripped.find("{"), stripped.rfind("}")
    if start != -1 and end > start:
        try:
            return json.loads(stripped[start : end + 1]), None
        except json.JSONDecodeError:
            pass
        except RecursionError:
            return None, REASON_NOT_JSON
    if start != -1 and end < start:
        return None, REASON_TRUNCATED
    return None, REASON_NOT_JSON


def _storable(text: str) -> str:
    """Replace lone UTF-16 surrogates, which a JSON escape such as \\ud83d can produce and Parquet cannot store."""
    return text.encode("utf-8", "replace").decode("utf-8")


def parse_answer(text: str, answer_choices: list[str], answer_format: AnswerFormat | None = None) -> ParsedAnswer:
    """Map a raw model output to the index of one of the answer choices.

    The label is read whatever the key order, so the format only decides format_followed. None is
    the default rationale-first format.
    """
    value, failure = _load_object(text)
    if failure is not None:
        return ParsedAnswer(None, None, INVALID_LABEL, False, failure)
    if not isinstance(value, dict):
        return ParsedAnswer(None, None, INVALID_LABEL, False, REASON_NOT_OBJECT)

    expected = (answer_format or parse_answer_format(DEFAULT_ANSWER_FORMAT)).keys
    followed = tuple(str(key).lower() for key in value) == expected
    keys = {str(key).lower(): key for key in value}
    rationale = value.get(keys["rationale"]) if "rationale" in keys else None
    rationale_text = None if rationale is None else _storable(str(rationale))
    extra = tuple(sorted(str(key) for key in value if str(key).lower() not in ("rationale", "label")))
    if "label" not in keys:
        return ParsedAnswer(rationale_text, None, INVALID_LABEL, False, REASON_NO_LABEL, extra, followed)
    label = value[keys["label"]]
    if isinstance(label, str):
        label = _storable(label)
    else:
        return ParsedAnswer(rationale_text, json.dumps(label), INVALID_LABEL, False, REASON_LABEL_NOT_STRING, extra, followed)

    wanted = normalize_label(label)
    matches = [index for index, choice in enumerate(answer_choices) if normalize_label(choice) == wanted]
    if len(matches) != 1:
        return ParsedAnswer(rationale_text, label, INVALID_LABEL, False, REASON_UNKNOWN_LABEL, extra, followed)
    return ParsedAnswer(rationale_text, label, matches[0], True, REASON_OK, extra, followed)
