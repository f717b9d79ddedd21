"""k-shot prompting through the real graph: SmolLM2 GGUF with 0 and 2 shots and MiniLM finetuned on
the same 2 examples, on a slice of real CoLA, ending in the learning-curve table and figure."""

import json

import pytest
import yaml
from dagster import DagsterInstance

from prompt_ft_assets.cli import run_experiment
from prompt_ft_assets.finetune_splits import training_examples
from prompt_ft_assets.paths import figures_dir, tables_dir
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

from .study_specs import MINILM, REGISTRY_ENTRIES, SMOLLM2

EVAL_LIMIT = 6
TRAIN_LIMIT = 32
SHOTS = 2
RUNS = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory, cola_dir):
    """Run the whole graph once; the tests below read what it stored."""
    folder = tmp_path_factory.mktemp("kshot")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("PROMPT_FT_STATE_DIR", str(folder / "state"))
    spec = {
        "name": "kshot",
        "datasets": [{**REGISTRY_ENTRIES["glue_cola"], "eval_limit": EVAL_LIMIT, "train_limit": TRAIN_LIMIT}],
        "prompt_models": [SMOLLM2],
        "prompting": {"runs": RUNS, "max_rationale_chars": 40, "shots": [0, SHOTS]},
        "encoders": [MINILM],
        "finetune": {"seeds": [0, 1], "train_sizes": [SHOTS], "num_epochs": 1, "learning_rate": 1e-4},
    }
    spec_path = folder / "kshot.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    outcome = run_experiment(spec_path, instance=DagsterInstance.ephemeral())
    store = ResultsStore(folder / "state" / "results")
    yield {"outcome": outcome, "spec": load_spec(spec_path), "store": store}
    patcher.undo()


def test_every_stage_succeeds(study):
    assert study["outcome"].failed == []


def test_shots_are_finetune_train_sets(study):
    store, spec = study["store"], study["spec"]
    config = spec.dataset("glue_cola")
    examples = store.read("examples", "glue_cola")
    predictions = store.read_table("prompt_predictions")
    kshot = predictions[predictions["shots"] == SHOTS]
    assert len(kshot) == RUNS * EVAL_LIMIT
    for run, group in kshot.groupby("run"):
        seed = spec.finetune.seeds[run]
        finetune_train = training_examples(examples, config, spec.finetune, SHOTS, seed)
        assert set(group["shot_seed"]) == {seed}
        assert group["shot_idx"].nunique() == 1
        assert set(json.loads(group["shot_idx"].iloc[0])) == set(finetune_train["idx"])
    finetuned = store.read_table("finetune_metrics")
    assert finetuned["train_examples"].tolist() == [SHOTS] * 2


def test_shots_reach_the_model(study):
    predictions = study["store"].read_table("prompt_predictions")
    zero = predictions[predictions["shots"] == 0].set_index(["run", "idx"])
    kshot = predictions[predictions["shots"] == SHOTS].set_index(["run", "idx"]).loc[zero.index]
    assert zero["shot_idx"].eq("[]").all()
    # Different messages give different cache keys, and the shots lengthen every prompt.
    assert not set(zero["cache_key"]) & set(kshot["cache_key"])
    assert (kshot["prompt_tokens"] > zero["prompt_tokens"]).all()
    assert (kshot["prompt"] == zero["prompt"]).all()


def test_metrics_rows_carry_shots(study):
    metrics = study["store"].read_table("prompt_run_metrics")
    assert sorted(metrics["shots"].tolist()) == [0] * RUNS + [SHOTS] * RUNS
    kshot = metrics[metrics["shots"] == SHOTS]
    assert all(len(json.loads(value)) == SHOTS for value in kshot["shot_idx"])
    assert sorted(kshot["shot_seed"].tolist()) == [0, 1]
    predictions = study["store"].read_table("prompt_predictions")
    settings = [json.loads(value) for value in predictions.loc[predictions["shots"] == SHOTS, "settings_json"]]
    assert {item["shots"] for item in settings} == {SHOTS}
    assert {item["shot_seed"] for item in settings} == {0, 1}


def test_learning_curve_table_and_figure(study):
    curve = study["store"].read("summary_by_train_size", "all")
    prompted = curve[curve["method"] == "k-shot generate"].sort_values("train_examples")
    assert prompted["train_examples"].tolist() == [0, SHOTS]
    assert prompted["n"].tolist() == [RUNS, RUNS]
    finetuned = curve[curve["method"] == "finetune"]
    assert finetuned["train_examples"].tolist() == [SHOTS]
    assert "flagged_runs" in curve
    assert "k-shot generate" in (tables_dir() / "by_train_size.md").read_text()
    assert (figures_dir() / "f1_by_train_size.png").read_bytes()[:4] == b"\x89PNG"


def test_prompted_tables_keep_zero_shot(study):
    by_model = study["store"].read("summary_by_model", "all")
    assert by_model["n"].tolist() == [RUNS]
