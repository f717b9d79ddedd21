"""Temperature and answer format as experiment dimensions: spec values, partition keys, messages,
grammars (checked with llama.cpp's grammar sampler on the SmolLM2 vocabulary), parsing, cache keys,
vote groups, tables and figures."""

import csv
import ctypes
import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from prompt_ft_assets.answer_formats import (
    DEFAULT_ANSWER_FORMAT,
    AnswerFormatError,
    example_answer,
    format_grammar,
    parse_answer_format,
)
from prompt_ft_assets.assets.aggregation import configuration_vote_rows
from prompt_ft_assets.assets.analysis import _draw
from prompt_ft_assets.model_files import resolve_gguf
from prompt_ft_assets.parsing import parse_answer
from prompt_ft_assets.partitions import (
    PROMPT_RUN_EXAMPLE,
    PartitionKeyError,
    PromptRun,
    parse_prompt_run,
    prompted_partition_keys,
)
from prompt_ft_assets.prompt_backends import BackendPlan
from prompt_ft_assets.prompt_runner import GENERATE, _pending_examples, run_prompt_partition
from prompt_ft_assets.prompt_setting_columns import run_setting_columns
from prompt_ft_assets.prompt_setting_tables import answer_format_table, temperature_table
from prompt_ft_assets.prompting import ANSWER_INSTRUCTION, Shot, answer_grammar, build_messages, cache_key
from prompt_ft_assets.spec import ExperimentSpec, SpecError, load_spec
from prompt_ft_assets.store import ResultsStore
from prompt_ft_assets.summaries import baseline_rows, build_summary_tables
from prompt_ft_assets.templates import load_promptsource_templates, render, select_templates

from .test_http_backend import TOKEN_VARIABLE, server  # noqa: F401 (the server fixture)
from .test_http_backend import _examples as http_examples
from .test_http_backend import _spec as http_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHOICES = ["no", "yes"]
FORMATS = ["rationale_label", "label", "label_rationale", "rationale40_label"]
MODEL_SHA = "cd" * 32


def _quickstart() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "experiments" / "quickstart.yaml").read_text())


def _write(tmp_path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _spec(**prompting) -> ExperimentSpec:
    data = _quickstart()
    data["prompting"].update(prompting)
    return ExperimentSpec.model_validate({**data, "spec_dir": str(PROJECT_ROOT / "experiments")})


# Partition keys


_ROUND_TRIP_RUNS = [
    PromptRun("smollm2-135m", "editing", run, shots=shots, temperature=temperature, answer_format=answer_format)
    for run, shots, temperature, answer_format in itertools.product(
        [0, 3], [0, 4], [None, 0.0, 0.05, 0.7, 1.0, 2.0], FORMATS
    )
] + [PromptRun("smollm2-135m", "editing", 0, "score", shots) for shots in (0, 16)]


@pytest.mark.parametrize("run", _ROUND_TRIP_RUNS, ids=lambda run: run.key)
def test_prompt_run_keys_round_trip(run):
    assert parse_prompt_run(run.key) == run
    assert parse_prompt_run(run.key).key == run.key


@pytest.mark.parametrize(
    ("run", "key"),
    [
        (PromptRun("smollm2-135m", "editing", 2), "smollm2-135m__editing__r2"),
        (PromptRun("smollm2-135m", "editing", 0, temperature=0.7), "smollm2-135m__editing__t0.7__r0"),
        (PromptRun("smollm2-135m", "editing", 1, temperature=1.0), "smollm2-135m__editing__t1__r1"),
        (PromptRun("smollm2-135m", "editing", 0, temperature=0.0), "smollm2-135m__editing__t0__r0"),
        (PromptRun("smollm2-135m", "editing", 0, answer_format="label"), "smollm2-135m__editing__flabel__r0"),
        (PromptRun("smollm2-135m", "editing", 0, shots=4, temperature=0.7, answer_format="label"), PROMPT_RUN_EXAMPLE),
        (PromptRun("smollm2-135m", "editing", 0, answer_format="rationale40_label"),
         "smollm2-135m__editing__frationale40_label__r0"),
    ],
)
def test_prompt_run_key_layout(run, key):
    assert run.key == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("smollm2__editing__t0.70__r0", "'t0.7'"),
        ("smollm2__editing__t1.0__r0", "'t1'"),
        ("smollm2__editing__t2.5__r0", "above 2"),
        ("smollm2__editing__t-1__r0", "is not '__k<shots>'"),
        ("smollm2__editing__t__r0", "is not '__k<shots>'"),
        ("smollm2__editing__flabel__t0.7__r0", "out of order"),
        ("smollm2__editing__t0.7__k4__r0", "out of order"),
        ("smollm2__editing__t0.7__t0.3__r0", "repeated"),
        ("smollm2__editing__flabel__flabel__r0", "repeated"),
        ("smollm2__editing__frationale_label__r0", "drop '__frationale_label'"),
        ("smollm2__editing__fbogus__r0", "answer format 'bogus' is unknown"),
        ("smollm2__editing__frationale0_label__r0", "answer format 'rationale0_label' is unknown"),
        ("smollm2__editing__t0.7__score", "no t or f part"),
        ("smollm2__editing__flabel__score", "no t or f part"),
        ("smollm2__editing__t0.7", "neither 'r<run>' nor 'score'"),
        ("smollm2____t0.7__r0", "joined by '__'"),
    ],
)
def test_bad_prompt_run_keys_rejected(key, message):
    with pytest.raises(PartitionKeyError, match=message) as caught:
        parse_prompt_run(key)
    assert repr(key) in str(caught.value)
    assert PROMPT_RUN_EXAMPLE in str(caught.value)


def test_default_spec_keys_unchanged():
    keys = [key.keys_by_dimension["prompt_run"] for key in prompted_partition_keys(_spec(runs=2))]
    assert "smollm2-135m__editing__r1" in keys
    assert all(len(key.split("__")) == 3 for key in keys)


def test_temperatures_add_partitions_besides_default():
    # SmolLM2's default is 0.2, so listing it adds nothing; gemma's default 1.0 is listed too.
    spec = _spec(runs=2, temperatures=[0, 0.2, 1.0], methods=["generate", "score"])
    runs = [parse_prompt_run(key.keys_by_dimension["prompt_run"]) for key in prompted_partition_keys(spec)]
    smollm = {(run.temperature, run.run) for run in runs if run.model == "smollm2-135m" and run.template == "editing"
              and run.method == GENERATE}
    gemma = {(run.temperature, run.run) for run in runs if run.model == "gemma3-270m" and run.template == "editing"
             and run.method == GENERATE}
    assert smollm == {(None, 0), (None, 1), (0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)}
    assert gemma == {(None, 0), (None, 1), (0.0, 0), (0.0, 1), (0.2, 0), (0.2, 1)}
    scores = [run for run in runs if run.method == "score"]
    assert len(scores) == 2 * 5
    assert all(run.temperature is None and run.answer_format == DEFAULT_ANSWER_FORMAT for run in scores)


def test_answer_formats_add_partitions_per_format():
    spec = _spec(runs=2, answer_formats=["label", "rationale_label"])
    runs = [parse_prompt_run(key.keys_by_dimension["prompt_run"]) for key in prompted_partition_keys(spec)]
    assert len(runs) == 2 * 5 * 2 * 2
    assert sum(run.answer_format == "label" for run in runs) == 2 * 5 * 2


def test_settings_default_to_pilot():
    spec = _spec()
    assert spec.prompting.temperatures is None
    assert spec.prompting.answer_formats == [DEFAULT_ANSWER_FORMAT]


@pytest.mark.parametrize(
    ("prompting", "message"),
    [
        ({"temperatures": [0.7, 0.7]}, r"list \[0.7\] more than once"),
        ({"temperatures": [-0.1]}, "temperature -0.1 is out of range"),
        ({"temperatures": [2.5]}, "temperature 2.5 is out of range"),
        ({"temperatures": [0.333]}, "more than two decimals"),
        ({"temperatures": []}, "empty list"),
        ({"answer_formats": ["json"]}, "answer format 'json' is unknown"),
        ({"answer_formats": ["label", "label"]}, r"list \['label'\] more than once"),
        ({"answer_formats": []}, "prompting.answer_formats"),
        ({"answer_formats": ["rationale100_label"]}, "not below max_rationale_chars 100"),
    ],
)
def test_invalid_settings_rejected(tmp_path, prompting, message):
    data = _quickstart()
    data["prompting"].update(prompting)
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, data))


# Formats: instructions, grammars, example answers and parsing


def test_default_format_keeps_pilot_messages():
    messages = build_messages("Is 'Dogs bark.' correct?", CHOICES, None, 100)
    instruction = ANSWER_INSTRUCTION.format(max_chars=100, choices='"no", "yes"')
    assert messages == [{"role": "user", "content": f"Is 'Dogs bark.' correct?\n\n{instruction}"}]
    # The pilot's grammar, byte for byte, so cached answers of earlier runs keep their keys.
    assert hashlib.sha256(answer_grammar(["unacceptable", "acceptable"], 100).encode()).hexdigest() == (
        "c8583ad5058f6e635b505e2886890c7b927d1a8d0d43a58cc674d40fdff80619"
    )


@pytest.mark.parametrize(
    ("name", "shown", "absent"),
    [
        ("label", '{"label": "<answer>"}', "reasoning"),
        ("label_rationale", '{"label": "<answer>", "rationale": "<your reasoning>"}', "reasoning first"),
        ("rationale_label", '{"rationale": "<your reasoning>", "label": "<answer>"}', "at most 40 "),
        ("rationale40_label", "at most 40 characters", "at most 100 "),
    ],
)
def test_instruction_per_format(name, shown, absent):
    content = build_messages("Prompt.", CHOICES, None, 100, answer_format=parse_answer_format(name))[-1]["content"]
    assert shown in content
    assert absent not in content
    assert 'exactly one of: "no", "yes"' in content


def test_shot_answers_follow_format():
    shots = [Shot("Is 'Cats sleep.' correct?", "yes")]
    label_first = build_messages("Prompt.", CHOICES, None, 100, shots, parse_answer_format("label_rationale"))
    label_only = build_messages("Prompt.", CHOICES, None, 100, shots, parse_answer_format("label"))
    assert label_first[1]["content"] == '{"label": "yes", "rationale": ""}'
    assert label_only[1]["content"] == '{"label": "yes"}'


@pytest.fixture(scope="module")
def grammar_checker():
    """Checks a text against a GBNF grammar with llama.cpp's grammar sampler, one single-character
    token at a time, on the SmolLM2 vocabulary (loaded without weights)."""
    import llama_cpp

    spec = _spec()
    llama = llama_cpp.Llama(str(resolve_gguf(spec, spec.prompt_models[0])), vocab_only=True, verbose=False)
    vocab = llama._model.vocab

    def allowed(sampler, token: int) -> bool:
        data = (llama_cpp.llama_token_data * 1)()
        data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
        candidates = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
        return math.isfinite(data[0].logit)

    def accepts(grammar: str, text: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        assert sampler, f"llama.cpp could not parse the grammar:\n{grammar}"
        try:
            for character in text:
                tokens = llama.tokenize(character.encode(), add_bos=False, special=False)
                assert len(tokens) == 1, f"{character!r} is not one token"
                # A rejected token is never accepted, because llama.cpp fails on accepting one.
                if not allowed(sampler, tokens[0]):
                    return False
                llama_cpp.llama_sampler_accept(sampler, tokens[0])
            # End of generation is allowed only where the grammar is complete.
            return allowed(sampler, llama_cpp.llama_vocab_eos(vocab))
        finally:
            llama_cpp.llama_sampler_free(sampler)

    yield accepts
    llama.close()


@pytest.mark.parametrize(
    ("name", "valid", "invalid"),
    [
        ("label", ['{"label": "yes"}', '{"label": "no"}'],
         ['{"label": "maybe"}', '{"label": "ye"}', '{"label": "yes", "rationale": ""}', '{"rationale": "", "label": "yes"}',
          '{"label": "yes"']),
        ("label_rationale", ['{"label": "no", "rationale": ""}', '{"label": "yes", "rationale": "' + "a" * 100 + '"}'],
         ['{"label": "yes"}', '{"rationale": "x", "label": "yes"}', '{"label": "yes", "rationale": "' + "a" * 101 + '"}',
          '{"label": "yes", "rationale": "a"b"}']),
        ("rationale_label", ['{"rationale": "Subject and verb agree.", "label": "yes"}', '{"rationale": "", "label": "no"}'],
         ['{"label": "yes"}', '{"label": "yes", "rationale": ""}', '{"rationale": "' + "a" * 101 + '", "label": "no"}']),
        ("rationale40_label", ['{"rationale": "' + "a" * 40 + '", "label": "yes"}', '{"rationale": "\\"quoted\\"", "label": "no"}'],
         ['{"rationale": "' + "a" * 41 + '", "label": "yes"}', '{"label": "yes", "rationale": ""}']),
    ],
)
def test_grammar_per_format(grammar_checker, name, valid, invalid):
    grammar = format_grammar(parse_answer_format(name), CHOICES, 100)
    for text in valid:
        assert grammar_checker(grammar, text), f"{name} rejected {text}"
    for text in invalid:
        assert not grammar_checker(grammar, text), f"{name} accepted {text}"


@pytest.mark.parametrize("name", FORMATS)
def test_example_answers_match_grammar(grammar_checker, name):
    answer_format = parse_answer_format(name)
    grammar = format_grammar(answer_format, CHOICES, 100)
    assert grammar_checker(grammar, example_answer(answer_format, "yes"))
    assert grammar_checker(grammar, example_answer(answer_format, "no", "Short."))


def test_unknown_format_rejected():
    with pytest.raises(AnswerFormatError, match="'rationale<N>_label'"):
        parse_answer_format("rationale_only")


@pytest.mark.parametrize(
    ("name", "text", "label", "followed"),
    [
        ("label", '{"label": "yes"}', 1, True),
        ("label", '{"rationale": "x", "label": "yes"}', 1, False),
        ("label_rationale", '{"label": "no", "rationale": "x"}', 0, True),
        ("label_rationale", '{"rationale": "x", "label": "no"}', 0, False),
        ("label_rationale", '{"label": "no"}', 0, False),
        ("rationale_label", '{"rationale": "x", "label": "yes"}', 1, True),
        ("rationale40_label", '{"rationale": "x", "label": "yes"}', 1, True),
        ("rationale40_label", '{"label": "yes", "rationale": "x"}', 1, False),
    ],
)
def test_parsing_per_format(name, text, label, followed):
    parsed = parse_answer(text, CHOICES, parse_answer_format(name))
    assert parsed.valid
    assert parsed.label_index == label
    assert parsed.format_followed is followed


def test_parsing_invalid_answer_not_followed():
    parsed = parse_answer('{"label": "maybe"}', CHOICES, parse_answer_format("label"))
    assert not parsed.valid
    assert parsed.format_followed
    assert not parse_answer("no json", CHOICES, parse_answer_format("label")).format_followed


# Cache keys


@pytest.fixture(scope="module")
def cola_rows(cola_dir):
    with (cola_dir / "validation.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:3]
    return pd.DataFrame({"idx": range(3), "label": [int(row[1]) for row in rows], "sentence": [row[3] for row in rows]})


def _plan() -> BackendPlan:
    return BackendPlan("llama_cpp_batched", MODEL_SHA, "/models/smollm2.gguf", {"kind": "llama_cpp_batched", "n_ctx": 2048})


def test_cache_keys_separate_formats_and_temperatures(cola_rows):
    spec = _spec(max_rationale_chars=100)
    model = spec.prompt_models[0]
    template = select_templates(load_promptsource_templates("glue", "cola"), ["editing"])[0]
    keys = {}
    for temperature, name in itertools.product([0.0, 0.2, 0.7, 1.0], FORMATS):
        pending = _pending_examples(spec, spec.datasets[0], model, template, cola_rows, _plan(), GENERATE, 0, [],
                                    temperature, parse_answer_format(name))
        keys[(temperature, name)] = {item.key for item in pending}
    assert all(len(found) == len(cola_rows) for found in keys.values())
    for first, second in itertools.combinations(keys, 2):
        assert not keys[first] & keys[second], f"{first} and {second} share cached answers"


def test_default_cache_keys_unchanged(cola_rows):
    # The pilot's recipe, written out: runs at the default temperature and format reuse its cached answers.
    spec = _spec(max_rationale_chars=100)
    model = spec.prompt_models[0]
    template = select_templates(load_promptsource_templates("glue", "cola"), ["editing"])[0]
    pending = _pending_examples(spec, spec.datasets[0], model, template, cola_rows, _plan(), GENERATE, 0, [],
                                model.temperature, parse_answer_format(DEFAULT_ANSWER_FORMAT))
    for item, (_, row) in zip(pending, cola_rows.iterrows()):
        rendered = render(template, {"sentence": row["sentence"], "label": int(row["label"])}, seed=0)
        grammar = answer_grammar(rendered.answer_choices, 100)
        sampling = {"temperature": 0.2, "max_tokens": 148, "grammar_sha256": hashlib.sha256(grammar.encode()).hexdigest(),
                    "chat_format": model.chat_format, "backend": _plan().cache_settings}
        messages = build_messages(rendered.prompt, rendered.answer_choices, model, 100)
        assert item.messages == messages
        assert item.key == cache_key(MODEL_SHA, messages, sampling, item.seed)


# Votes


def _predictions(temperature: float, is_default: bool, answer_format: str, correct: bool) -> pd.DataFrame:
    labels = np.array([0, 1, 0, 1, 1, 0])
    rows = []
    for run in range(3):
        for idx, label in enumerate(labels):
            rows.append({"model": "smollm2-135m", "template": "editing", "method": "generate", "shots": 0,
                         "temperature": temperature, "temperature_is_default": is_default,
                         "answer_format": answer_format, "run": run, "idx": idx, "label": int(label),
                         "prediction": int(label) if correct else int(1 - label)})
    return pd.DataFrame(rows)


def test_votes_never_mix_temperatures():
    frame = pd.concat([_predictions(0.2, True, DEFAULT_ANSWER_FORMAT, True),
                       _predictions(0.7, False, DEFAULT_ANSWER_FORMAT, False)], ignore_index=True)
    rows = pd.DataFrame(configuration_vote_rows(frame, "glue_cola", 2))
    assert len(rows) == 2 * 3  # per temperature, the three pairs of its three runs
    assert set(rows["n_runs"]) == {3}
    assert set(rows.loc[rows["temperature"] == 0.2, "macro_f1"]) == {1.0}
    assert set(rows.loc[rows["temperature"] == 0.7, "macro_f1"]) == {0.0}


def test_votes_never_mix_formats():
    frame = pd.concat([_predictions(0.2, True, "label", True), _predictions(0.2, True, "label_rationale", False)],
                      ignore_index=True)
    rows = pd.DataFrame(configuration_vote_rows(frame, "glue_cola", 2))
    assert sorted(rows["answer_format"].unique()) == ["label", "label_rationale"]
    assert set(rows.loc[rows["answer_format"] == "label", "macro_f1"]) == {1.0}
    assert set(rows.loc[rows["answer_format"] == "label_rationale", "macro_f1"]) == {0.0}


def test_votes_keep_score_rows():
    frame = _predictions(0.0, True, DEFAULT_ANSWER_FORMAT, True).assign(method="score", answer_format=None)
    rows = configuration_vote_rows(frame, "glue_cola", 2)
    assert len(rows) == 3
    assert all(row["answer_format"] is None for row in rows)


# Stored columns, tables and figures


def test_run_columns_of_old_predictions():
    old = pd.DataFrame({"completion_tokens": [10, 30], "latency_s": [1.0, 2.0]})
    columns = run_setting_columns(old, "generate")
    assert columns["temperature_is_default"] is True
    assert columns["answer_format"] == DEFAULT_ANSWER_FORMAT
    assert columns["completion_tokens_per_1000"] == 20_000
    assert columns["seconds_per_1000"] == pytest.approx(1500.0)
    assert run_setting_columns(old, "score")["answer_format"] is None


def test_cost_counts_overlapping_answers_once():
    # Two answers decoded side by side from t=0 to t=2 s cost 2 busy seconds, not 4.
    finished = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta([2.0, 2.0], unit="s")
    frame = pd.DataFrame({"completion_tokens": [5, 5], "latency_s": [2.0, 2.0], "finished_at": finished,
                          "answer_format": "label", "temperature_is_default": False, "format_followed": [True, False]})
    columns = run_setting_columns(frame, "generate")
    assert columns["seconds_per_1000"] == pytest.approx(1000.0)
    assert columns["answer_format"] == "label"
    assert columns["temperature_is_default"] is False
    assert columns["format_followed_rate"] == 0.5


def _run_metrics(temperature, is_default, answer_format, f1s, with_settings=True):
    rows = []
    for run, f1 in enumerate(f1s):
        row = {"dataset": "glue_cola", "model": "smollm2-135m", "template": "editing", "method": "generate", "run": run,
               "shots": 0, "family": "smollm2", "params_b": 0.135, "is_moe": False, "macro_precision": f1,
               "macro_recall": f1, "macro_f1": f1, "invalid_rate": 0.1, "flag_one_class": f1 < 0.4,
               "flag_near_chance": False, "flag_high_invalid": False, "temperature": temperature,
               "mean_completion_tokens": 40.0, "completion_tokens_per_1000": 40_000.0, "seconds_per_1000": 300.0,
               "format_followed_rate": 1.0}
        if with_settings:
            row.update(temperature_is_default=is_default, answer_format=answer_format)
        rows.append(row)
    return pd.DataFrame(rows)


def test_existing_tables_unchanged_by_new_runs():
    old = _run_metrics(0.2, True, DEFAULT_ANSWER_FORMAT, [0.5, 0.6], with_settings=False)
    current = pd.concat([_run_metrics(0.2, True, DEFAULT_ANSWER_FORMAT, [0.5, 0.6]),
                         _run_metrics(0.7, False, DEFAULT_ANSWER_FORMAT, [0.1, 0.9]),
                         _run_metrics(0.2, True, "label", [0.2, 0.3])], ignore_index=True)
    before = build_summary_tables(old, pd.DataFrame(), pd.DataFrame())
    after = build_summary_tables(current, pd.DataFrame(), pd.DataFrame())
    for name in ("by_prompt_model", "by_model", "by_family", "by_vote_k", "by_train_size"):
        pd.testing.assert_frame_equal(before[name], after[name], check_dtype=False)
    assert len(baseline_rows(current)) == 2


def test_temperature_table_has_run_std():
    frame = pd.concat([_run_metrics(0.2, True, DEFAULT_ANSWER_FORMAT, [0.5, 0.6]),
                       _run_metrics(0.7, False, DEFAULT_ANSWER_FORMAT, [0.1, 0.9]),
                       _run_metrics(0.0, False, DEFAULT_ANSWER_FORMAT, [0.4, 0.4])], ignore_index=True)
    table = temperature_table(frame).set_index("temperature")
    assert list(table.index) == [0.0, 0.2, 0.7]
    assert table.loc[0.7, "macro_f1_std"] == pytest.approx(np.std([0.1, 0.9], ddof=1))
    assert table.loc[0.0, "macro_f1_std"] == 0.0
    assert table["model_default"].tolist() == [False, True, False]
    assert table.loc[0.7, "flagged_runs"] == 1


def test_answer_format_table_has_cost():
    frame = pd.concat([_run_metrics(0.2, True, DEFAULT_ANSWER_FORMAT, [0.5, 0.6]),
                       _run_metrics(0.2, True, "label", [0.2, 0.3]).assign(seconds_per_1000=[100.0, 200.0])],
                      ignore_index=True)
    table = answer_format_table(frame).set_index("answer_format")
    assert table.loc["label", "seconds_per_1000"] == 150.0
    assert table.loc["label", "macro_f1_mean"] == pytest.approx(0.25)
    assert table.loc[DEFAULT_ANSWER_FORMAT, "invalid_rate"] == pytest.approx(0.1)
    assert table.loc["label", "completion_tokens_per_1000"] == 40_000.0


def test_setting_figures_drawn(tmp_path):
    frame = pd.concat([_run_metrics(0.2, True, DEFAULT_ANSWER_FORMAT, [0.5, 0.6]),
                       _run_metrics(0.7, False, "label", [0.1, 0.9])], ignore_index=True)
    temperature_png = _draw("f1_by_temperature", temperature_table(frame), tmp_path / "temperature.png")
    format_png = _draw("f1_validity_cost_by_answer_format", answer_format_table(frame), tmp_path / "format.png")
    empty_png = _draw("f1_by_temperature", pd.DataFrame(), tmp_path / "empty.png")
    for path in (temperature_png, format_png, empty_png):
        assert path.read_bytes().startswith(b"\x89PNG")


# The HTTP backend with the new grammars and messages


@pytest.mark.slow
@pytest.mark.parametrize("name", ["label", "label_rationale"])
def test_served_formats_follow_grammar(server, cola_dir, state_dir, monkeypatch, name):
    """A real llama-cpp-python server on 127.0.0.1 answers in the format's layout at temperature 0."""
    monkeypatch.setenv(TOKEN_VARIABLE, server["token"])
    spec = http_spec(server["url"], server["sha256"])
    template = select_templates(load_promptsource_templates("glue", "cola"), ["editing"])[0]
    store = ResultsStore(state_dir / "results")

    frame = run_prompt_partition(spec, spec.datasets[0], spec.prompt_models[0], template, 0, http_examples(cola_dir),
                                 store, f"glue_cola|smollm2-135m__editing__t0__f{name}__r0", temperature=0.0,
                                 answer_format=name)

    assert set(frame["backend"]) == {"openai_http"}
    assert frame["valid"].all(), frame["raw_output"].tolist()
    assert frame["format_followed"].all(), frame["raw_output"].tolist()
    assert set(frame["answer_format"]) == {name}
    assert set(frame["temperature"]) == {0.0}
    assert not frame["temperature_is_default"].any()
    expected_keys = list(parse_answer_format(name).keys)
    for raw in frame["raw_output"]:
        assert list(json.loads(raw)) == expected_keys
