import pytest

from prompt_ft_assets.parsing import INVALID_LABEL, parse_answer

CHOICES = ["no", "yes"]

# (raw output, expected class index, expected reason)
CASES = [
    ('{"rationale": "Fine.", "label": "yes"}', 1, "ok"),
    ('{"rationale": "Broken.", "label": "no"}', 0, "ok"),
    ('{"rationale": "x", "label": "Yes"}', 1, "ok"),
    ('{"rationale": "x", "label": " YES. "}', 1, "ok"),
    ('{"rationale": "x", "label": "\\"no\\""}', 0, "ok"),
    ('{"rationale": "x", "label": "no!"}', 0, "ok"),
    ('Sure! ```json\n{"rationale": "x", "label": "yes"}\n```', 1, "ok"),
    ('{"rationale": "x", "label": "yes", "confidence": 0.9}', 1, "ok"),
    ('{"Rationale": "x", "LABEL": "no"}', 0, "ok"),
    ("", INVALID_LABEL, "empty"),
    ("   \n", INVALID_LABEL, "empty"),
    ('{"rationale": "the sentence is', INVALID_LABEL, "truncated_json"),
    ("The sentence is grammatical, so yes.", INVALID_LABEL, "not_json"),
    ('["yes"]', INVALID_LABEL, "json_not_object"),
    ('{"rationale": "x"}', INVALID_LABEL, "missing_label_key"),
    ('{"rationale": "x", "label": 1}', INVALID_LABEL, "label_not_string"),
    ('{"rationale": "x", "label": "correct"}', INVALID_LABEL, "label_not_in_choices"),
    ('{"rationale": "x", "label": "yes and no"}', INVALID_LABEL, "label_not_in_choices"),
]


@pytest.mark.parametrize(("raw", "index", "reason"), CASES)
def test_parse_answer(raw, index, reason):
    parsed = parse_answer(raw, CHOICES)
    assert parsed.label_index == index
    assert parsed.reason == reason
    assert parsed.valid == (reason == "ok")


def test_parse_answer_keeps_rationale_and_extra_keys():
    parsed = parse_answer('{"rationale": "Subject and verb agree.", "label": "yes", "score": 3}', CHOICES)
    assert parsed.rationale == "Subject and verb agree."
    assert parsed.extra_keys == ("score",)


def test_parse_answer_ambiguous_choices_invalid():
    parsed = parse_answer('{"rationale": "x", "label": "yes"}', ["Yes", "yes"])
    assert not parsed.valid
