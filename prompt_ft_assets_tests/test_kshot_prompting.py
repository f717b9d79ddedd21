"""k-shot prompting: spec values, partition keys, the shots each run draws, its messages and cache
keys, and the learning-curve rows that set it beside finetuning on the same examples."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from llama_cpp import llama_chat_format

from prompt_ft_assets.assets.analysis import _draw, train_size_series
from prompt_ft_assets.datasets_io import load_dataset_frame
from prompt_ft_assets.finetune_splits import TrainSizeError, training_examples
from prompt_ft_assets.parsing import parse_answer
from prompt_ft_assets.partitions import PartitionKeyError, PromptRun, parse_prompt_run, prompted_partition_keys
from prompt_ft_assets.prompt_shots import draw_shots, render_shots, shot_seed, stored_shot_columns
from prompt_ft_assets.prompting import (
    Shot,
    answer_grammar,
    build_messages,
    build_score_messages,
    cache_key,
    shot_answer,
)
from prompt_ft_assets.spec import ExperimentSpec, FinetuneSettings, SpecError, load_spec
from prompt_ft_assets.summaries import build_summary_tables, kshot_curve_rows, train_size_table, zero_shot_rows
from prompt_ft_assets.templates import load_promptsource_templates, select_templates

from .test_finetune_splits import cola_spec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAIN_LIMIT = 300
EVAL_LIMIT = 60
MODEL_SHA = "ab" * 32
SAMPLING = {"temperature": 0.2, "max_tokens": 88}


def _quickstart() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "experiments" / "quickstart.yaml").read_text())


def _write(tmp_path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def cola():
    spec = cola_spec(TRAIN_LIMIT, EVAL_LIMIT)
    return spec.datasets[0], load_dataset_frame(spec, spec.datasets[0])


@pytest.fixture
def cola_model():
    spec = ExperimentSpec.model_validate({**_quickstart(), "spec_dir": str(PROJECT_ROOT / "experiments")})
    return spec.prompt_models[0]


@pytest.fixture(scope="module")
def template():
    return select_templates(load_promptsource_templates("glue", "cola"), ["editing"])[0]


# Spec and partition keys


def test_shots_default_to_zero_shot(tmp_path):
    spec = load_spec(_write(tmp_path, _quickstart()))
    assert spec.prompting.shots == [0]


@pytest.mark.parametrize(
    ("shots", "message"),
    [
        ([-1], "shots value -1 is invalid"),
        ([0, 4, 4], r"list \[4\] more than once"),
        ([], "prompting.shots"),
        ([101], "exceeds train_limit 100"),
    ],
)
def test_invalid_shots_rejected(tmp_path, shots, message):
    data = _quickstart()
    data["datasets"][0]["train_limit"] = 100
    data["prompting"]["shots"] = shots
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("run", "key"),
    [
        (PromptRun("smollm2-135m", "editing", 3), "smollm2-135m__editing__r3"),
        (PromptRun("smollm2-135m", "editing", 0, "score"), "smollm2-135m__editing__score"),
        (PromptRun("smollm2-135m", "editing", 1, shots=4), "smollm2-135m__editing__k4__r1"),
        (PromptRun("smollm2-135m", "editing", 0, "score", 16), "smollm2-135m__editing__k16__score"),
    ],
)
def test_kshot_keys_round_trip(run, key):
    assert run.key == key
    assert parse_prompt_run(key) == run


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("smollm2__editing__k0__r1", "drop '__k0'"),
        ("smollm2__editing__k__r1", "__k<shots>"),
        ("smollm2__editing__k04__r1", "__k<shots>"),
        ("smollm2__editing__k-2__r1", "__k<shots>"),
        ("smollm2__editing__kx__score", "__k<shots>"),
        ("smollm2__editing__k4", "__k<shots>"),
        ("smollm2__editing__r1__k4", "__k<shots>"),
        ("smollm2__editing__k4__r1__r2", "__k<shots>"),
        ("smollm2__editing__k4__scores", "__k<shots>"),
    ],
)
def test_bad_kshot_keys_rejected(key, message):
    with pytest.raises(PartitionKeyError, match=message):
        parse_prompt_run(key)


def test_shots_add_partitions_per_k(tmp_path):
    data = _quickstart()
    data["prompting"].update(runs=2, methods=["generate", "score"], shots=[0, 4])
    spec = load_spec(_write(tmp_path, data))
    runs = [parse_prompt_run(key.keys_by_dimension["prompt_run"]) for key in prompted_partition_keys(spec)]
    pairs = len(spec.prompt_models) * 5
    assert len(runs) == pairs * 2 * 3
    assert sum(run.shots == 4 for run in runs) == pairs * 3
    assert sum(run.shots == 4 and run.method == "score" for run in runs) == pairs


def test_zero_shot_keys_unchanged(tmp_path):
    data = _quickstart()
    data["prompting"]["runs"] = 2
    keys = [key.keys_by_dimension["prompt_run"] for key in prompted_partition_keys(load_spec(_write(tmp_path, data)))]
    assert "smollm2-135m__editing__r1" in keys
    assert not any("__k" in key for key in keys)


# The shots each run draws


@pytest.mark.parametrize("seeds", [[0, 1], [5, 3, 9]])
def test_shot_seed_cycles_finetune_seeds(seeds):
    assert [shot_seed(seeds, run) for run in range(2 * len(seeds))] == seeds + seeds


@pytest.mark.parametrize("k_fold", [-1, 3])
@pytest.mark.parametrize("k", [2, 8, 32])
def test_shots_equal_finetune_train_set(cola, k, k_fold):
    config, examples = cola
    settings = FinetuneSettings(seeds=[0, 1, 2], k_fold=k_fold)
    for run in range(4):
        shots = draw_shots(examples, config, settings, k, run)
        seed = settings.seeds[run % 3]
        finetune_train = training_examples(examples, config, settings, train_size=k, seed=seed)
        assert shots.seed == seed
        assert len(shots.idx) == k
        assert set(shots.idx) == set(finetune_train["idx"])


def test_shots_differ_between_seeds(cola):
    config, examples = cola
    settings = FinetuneSettings(seeds=[0, 1])
    assert draw_shots(examples, config, settings, 16, 0).idx != draw_shots(examples, config, settings, 16, 1).idx


def test_shots_stratified_over_labels(cola):
    config, examples = cola
    shots = draw_shots(examples, config, FinetuneSettings(seeds=[0]), 16, 0)
    assert set(shots.rows["label"]) == {0, 1}


def test_shots_come_from_train_split(cola):
    config, examples = cola
    settings = FinetuneSettings(seeds=[0, 1])
    train_texts = set(examples.loc[examples["split"] == config.train_split, "sentence"])
    for k in (1, 4, 64, TRAIN_LIMIT):
        for run in (0, 1):
            rows = draw_shots(examples, config, settings, k, run).rows
            assert set(rows["split"]) == {config.train_split}
            assert rows["in_sample"].all()
            assert set(rows["sentence"]) <= train_texts


def test_shots_never_read_evaluation_rows():
    # Evaluation rows share idx values with train rows and outnumber them; no shot may be one of them.
    config = cola_spec(TRAIN_LIMIT, EVAL_LIMIT).datasets[0]
    train = pd.DataFrame({"split": "train", "idx": np.arange(20), "sentence": [f"train {i}" for i in range(20)],
                          "label": [0, 1] * 10, "in_sample": True})
    evaluation = pd.DataFrame({"split": "validation", "idx": np.arange(200), "sentence": [f"eval {i}" for i in range(200)],
                               "label": [0, 1] * 100, "in_sample": True})
    examples = pd.concat([evaluation, train], ignore_index=True)
    settings = FinetuneSettings(seeds=list(range(10)))
    for run in range(10):
        rows = draw_shots(examples, config, settings, 20, run).rows
        assert rows["sentence"].str.startswith("train ").all()
    with pytest.raises(TrainSizeError, match="train size 21 exceeds the 20 training examples"):
        draw_shots(examples, config, settings, 21, 0)


def test_zero_shots_draw_nothing(cola):
    config, examples = cola
    shots = draw_shots(examples, config, FinetuneSettings(seeds=[4]), 0, 0)
    assert shots.idx == []
    assert shots.columns() == {"shots": 0, "shot_idx": "[]", "shot_seed": 4}


# Messages and cache keys


def _shots() -> list[Shot]:
    return [Shot("Is 'Cats sleeps.' correct?", "no"), Shot("Is 'Cats sleep.' correct?", "yes")]


def test_generate_messages_put_shots_first(cola_model):
    zero_shot = build_messages("Is 'Dogs bark.' correct?", ["no", "yes"], cola_model, 100)
    messages = build_messages("Is 'Dogs bark.' correct?", ["no", "yes"], cola_model, 100, _shots())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[-1] == zero_shot[0]
    assert messages[0]["content"] == "Is 'Cats sleeps.' correct?"
    assert json.loads(messages[1]["content"]) == {"rationale": "", "label": "no"}
    assert json.loads(messages[3]["content"]) == {"rationale": "", "label": "yes"}


def test_zero_shots_keep_messages(cola_model):
    prompt = "Is 'Dogs bark.' correct?"
    assert build_messages(prompt, ["no", "yes"], cola_model, 100, []) == build_messages(prompt, ["no", "yes"], cola_model, 100)
    assert build_score_messages(prompt, []) == [{"role": "user", "content": prompt}]


def test_score_messages_answer_with_choice():
    messages = build_score_messages("Is 'Dogs bark.' correct?", _shots())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [messages[1]["content"], messages[3]["content"]] == ["no", "yes"]


def test_shot_answer_parses_as_gold_label():
    parsed = parse_answer(shot_answer("yes"), ["no", "yes"])
    assert parsed.valid
    assert parsed.label_index == 1
    # The grammar's fixed parts, so a shot answer has the layout the model is asked for.
    assert shot_answer("yes").startswith('{"rationale": "", "label": ')
    assert '\\"label\\": ' in answer_grammar(["no", "yes"], 100)


def test_shots_render_in_gemma_format(cola_model):
    messages = build_messages("Is 'Dogs bark.' correct?", ["no", "yes"], cola_model, 100, _shots())
    prompt = llama_chat_format.format_gemma(messages=messages).prompt
    assert prompt.count("<start_of_turn>user\n") == 3
    assert prompt.count("<start_of_turn>model\n") == 3
    assert prompt.endswith("<start_of_turn>model\n")
    assert '<start_of_turn>model\n{"rationale": "", "label": "no"}<end_of_turn>' in prompt


def test_cache_keys_change_with_shots(cola_model):
    prompt = "Is 'Dogs bark.' correct?"
    zero_shot = cache_key(MODEL_SHA, build_messages(prompt, ["no", "yes"], cola_model, 100), SAMPLING, 7)
    empty = cache_key(MODEL_SHA, build_messages(prompt, ["no", "yes"], cola_model, 100, []), SAMPLING, 7)
    two = cache_key(MODEL_SHA, build_messages(prompt, ["no", "yes"], cola_model, 100, _shots()), SAMPLING, 7)
    other = cache_key(MODEL_SHA, build_messages(prompt, ["no", "yes"], cola_model, 100, _shots()[::-1]), SAMPLING, 7)
    assert empty == zero_shot
    assert two != zero_shot
    assert other != two


def test_render_shots_pairs_gold_choice(cola, template):
    config, examples = cola
    shots = draw_shots(examples, config, FinetuneSettings(seeds=[0]), 8, 0)
    rendered = render_shots(template, shots.rows, config.text_fields, seed=0)
    assert len(rendered) == 8
    for shot, (_, row) in zip(rendered, shots.rows.iterrows()):
        assert row["sentence"] in shot.prompt
        assert shot.answer == ["no", "yes"][int(row["label"])]


def test_stored_shot_columns_read_older_rows():
    older = pd.DataFrame({"idx": [0, 1]})
    assert stored_shot_columns(older) == {"shots": 0, "shot_idx": "[]", "shot_seed": None}
    stored = older.assign(shots=4, shot_idx="[3, 9, 12, 40]", shot_seed=1)
    assert stored_shot_columns(stored) == {"shots": 4, "shot_idx": "[3, 9, 12, 40]", "shot_seed": 1}


# Learning-curve rows


def _run_metrics() -> pd.DataFrame:
    rows = []
    for shots, f1 in ((0, 0.3), (4, 0.4), (16, 0.5)):
        for run in (0, 1):
            rows.append({
                "dataset": "glue_cola", "method": "generate", "model": "smollm2-135m", "template": "editing",
                "family": "smollm2", "params_b": 0.135, "is_moe": False, "run": run, "shots": shots,
                "macro_precision": f1, "macro_recall": f1, "macro_f1": f1 + 0.01 * run,
                "flag_one_class": shots == 0, "flag_near_chance": True, "flag_high_invalid": False,
            })
    return pd.DataFrame(rows)


def _finetune_metrics() -> pd.DataFrame:
    rows = []
    for train_size, f1 in ((4, 0.33), (16, 0.35), (None, 0.6)):
        for seed in (0, 1):
            rows.append({
                "dataset": "glue_cola", "method": "finetune", "encoder": "minilm-l6", "family": "bert", "params_m": 22.7,
                "seed": seed, "train_size": train_size, "train_examples": train_size or 1024,
                "macro_precision": f1, "macro_recall": f1, "macro_f1": f1,
                "flag_one_class": train_size == 4, "flag_near_chance": False, "flag_high_invalid": False,
            })
    frame = pd.DataFrame(rows)
    frame["train_size"] = frame["train_size"].astype("Int64")
    return frame


def test_learning_curve_sets_kshot_beside_finetune():
    table = train_size_table(_finetune_metrics(), kshot_curve_rows(_run_metrics()))
    prompted = table[table["method"] == "k-shot generate"].sort_values("train_examples")
    finetuned = table[table["method"] == "finetune"].sort_values("train_examples")
    assert prompted["train_examples"].tolist() == [0, 4, 16]
    assert prompted["model"].eq("smollm2-135m").all()
    assert prompted["n"].tolist() == [2, 2, 2]
    assert prompted["macro_f1_mean"].tolist() == pytest.approx([0.305, 0.405, 0.505])
    assert finetuned["train_examples"].tolist() == [4, 16, 1024]
    assert set(prompted["train_examples"]) & set(finetuned["train_examples"]) == {4, 16}


def test_learning_curve_keeps_flags():
    table = train_size_table(_finetune_metrics(), kshot_curve_rows(_run_metrics())).set_index(["method", "train_examples"])
    assert table.loc[("k-shot generate", 0), "flagged_runs"] == 2
    assert table.loc[("k-shot generate", 0), "flags"] == "one_class,near_chance"
    assert table.loc[("k-shot generate", 16), "flags"] == "near_chance"
    assert table.loc[("finetune", 4), "flags"] == "one_class"
    assert table.loc[("finetune", 1024), "flagged_runs"] == 0


def test_prompted_tables_use_zero_shot_runs():
    metrics = _run_metrics()
    assert zero_shot_rows(metrics)["shots"].tolist() == [0, 0]
    assert len(zero_shot_rows(metrics.drop(columns=["shots"]))) == len(metrics)
    tables = build_summary_tables(metrics, pd.DataFrame(), _finetune_metrics())
    assert tables["by_model"]["n"].tolist() == [2]
    assert tables["by_model"]["macro_f1_mean"].tolist() == pytest.approx([0.305])
    assert tables["by_vote_k"]["n"].tolist() == [2]
    assert tables["comparison"]["best_template_f1_mean"].tolist() == pytest.approx([0.305])
    assert set(tables["by_train_size"]["method"]) == {"finetune", "k-shot generate"}


def test_learning_curve_figure_with_zero_shots(tmp_path):
    table = train_size_table(_finetune_metrics(), kshot_curve_rows(_run_metrics()))
    assert set(train_size_series(table)["series"]) == {"finetune / minilm-l6", "k-shot generate / smollm2-135m"}
    path = _draw("f1_by_train_size", table, tmp_path / "curve.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
