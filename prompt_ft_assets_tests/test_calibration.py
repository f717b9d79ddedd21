"""Calibrated label scoring: the fitting functions on constructed scores, the train-only sample on
real CoLA, and a score partition calibrated through Dagster with the real SmolLM2."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from prompt_ft_assets.assets.calibrated import (
    calibrated_prediction_rows,
    calibration_inputs,
    calibration_metric_rows,
    fit_from_scored_inputs,
)
from prompt_ft_assets.calibration import (
    CONTENT_FREE,
    TRAIN_SAMPLE,
    CalibrationError,
    apply_calibration,
    apply_class_bias,
    apply_contextual,
    calibration_sample,
    content_free_examples,
    fit_calibration,
    fit_class_bias,
    fit_contextual,
    score_matrix,
)
from prompt_ft_assets.datasets_io import load_dataset_frame
from prompt_ft_assets.metrics import classification_metrics
from prompt_ft_assets.parsing import INVALID_LABEL
from prompt_ft_assets.spec import CalibrationSettings, SpecError, load_spec

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

N_CLASSES = 2


def _biased_scores(labels: np.ndarray, shift: float, signal: float = 1.0) -> np.ndarray:
    """Log-probabilities where the true class gets `signal` extra and class 1 always gets `shift` extra."""
    scores = np.full((labels.size, N_CLASSES), -3.0)
    scores[np.arange(labels.size), labels] += signal
    scores[:, 1] += shift
    return scores


def test_raw_scores_of_biased_prompt_are_one_class():
    labels = np.array([0, 1] * 20)
    predictions = apply_calibration(_biased_scores(labels, shift=2.0), None, "raw")[1]
    assert set(predictions.tolist()) == {1}


def test_contextual_calibration_fixes_one_class():
    labels = np.array([0, 1] * 20)
    content_free = np.array([[-3.0, -1.0], [-3.2, -1.2], [-2.8, -0.8]])
    probabilities = fit_contextual(content_free)
    calibrated, predictions = apply_contextual(_biased_scores(labels, shift=2.0), probabilities)
    assert probabilities[1] > 0.85
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    assert classification_metrics(labels, predictions, N_CLASSES).macro_f1 == 1.0


def test_class_bias_fixes_one_class():
    train_labels = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    bias = fit_class_bias(_biased_scores(train_labels, shift=2.0), train_labels, N_CLASSES)
    assert bias[0] == 0.0
    assert -3.0 < bias[1] < -1.0
    eval_labels = np.array([0, 1] * 15)
    predictions = apply_class_bias(_biased_scores(eval_labels, shift=2.0), bias)[1]
    assert classification_metrics(eval_labels, predictions, N_CLASSES).macro_f1 == 1.0


def test_class_bias_stays_zero_when_raw_is_best():
    labels = np.array([0, 1, 0, 1, 1])
    assert fit_class_bias(_biased_scores(labels, shift=0.0), labels, N_CLASSES).tolist() == [0.0, 0.0]


def test_class_bias_without_signal_picks_majority():
    # Identical scores cannot separate the classes. Predicting the majority class everywhere gives
    # the higher macro F1 (0.375 against 0.286), so the fit moves every prediction to class 1.
    labels = np.array([0, 1, 0, 1, 1])
    scores = np.tile([-1.0, -1.5], (labels.size, 1))
    bias = fit_class_bias(scores, labels, N_CLASSES)
    assert set(apply_class_bias(scores, bias)[1].tolist()) == {1}


def test_class_bias_matches_brute_force_threshold():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = rng.normal(size=(60, 2)) + np.stack([np.zeros(60), 0.8 * labels + 1.5], axis=1)
    bias = fit_class_bias(scores, labels, N_CLASSES)
    fitted = classification_metrics(labels, apply_class_bias(scores, bias)[1], N_CLASSES).macro_f1
    best = max(
        classification_metrics(labels, apply_class_bias(scores, np.array([0.0, b]))[1], N_CLASSES).macro_f1
        for b in np.linspace(-8, 8, 4001)
    )
    assert fitted >= best - 1e-9


def test_class_bias_three_classes():
    labels = np.array([0, 1, 2] * 10)
    scores = np.full((labels.size, 3), -4.0)
    scores[np.arange(labels.size), labels] += 1.0
    scores[:, 2] += 3.0
    scores[:, 1] += 1.5
    assert set(np.argmax(scores, axis=1).tolist()) == {2}
    bias = fit_class_bias(scores, labels, 3)
    predictions = apply_class_bias(scores, bias)[1]
    assert classification_metrics(labels, predictions, 3).macro_f1 == 1.0


def test_non_finite_rows_are_invalid_and_skipped():
    labels = np.array([0, 1, 0, 1])
    scores = _biased_scores(labels, shift=2.0)
    scores[0] = np.nan
    predictions = apply_class_bias(scores, np.array([0.0, -2.0]))[1]
    assert predictions[0] == INVALID_LABEL
    assert predictions[1:].tolist() == [1, 0, 1]
    bias = fit_class_bias(scores, labels, N_CLASSES)
    assert np.isfinite(bias).all()


def test_contextual_fit_without_finite_inputs_raises():
    with pytest.raises(CalibrationError, match="content_free_inputs"):
        fit_contextual(np.full((3, 2), np.nan))


def test_score_matrix_marks_bad_rows():
    matrix = score_matrix(pd.Series(["[-1.0, -2.0]", "[-1.0]", None, "[-1.0, -Infinity]"]), N_CLASSES)
    assert matrix[0].tolist() == [-1.0, -2.0]
    assert np.isnan(matrix[1:]).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(calibration={"train_examples": 1}), "train_examples"),
        (lambda p: p.update(calibration={"content_free_inputs": ["N/A", "N/A"]}), "contain a duplicate"),
        (lambda p: p.update(calibration={"content_free_inputs": []}), "content_free_inputs"),
        (lambda p: p.update(calibration={"train_exmples": 8}), "did you mean 'train_examples'"),
    ],
)
def test_invalid_calibration_settings_rejected(tmp_path, change, message):
    prompting = {"methods": ["score"]}
    change(prompting)
    spec = {"name": "c", "datasets": [REGISTRY_ENTRIES["glue_cola"]], "prompt_models": [SMOLLM2], "prompting": prompting}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_calibration_defaults_and_null(tmp_path):
    spec = {"name": "c", "datasets": [REGISTRY_ENTRIES["glue_cola"]], "prompt_models": [SMOLLM2],
            "prompting": {"methods": ["score"]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    settings = load_spec(path).prompting.calibration
    assert settings == CalibrationSettings(train_examples=64, seed=0, content_free_inputs=["N/A", "", "[MASK]"])
    spec["prompting"]["calibration"] = None
    path.write_text(yaml.safe_dump(spec))
    assert load_spec(path).prompting.calibration is None


@pytest.fixture(scope="module")
def cola(tmp_path_factory, cola_dir):
    """The real CoLA splits as the dataset asset stores them, and the dataset's spec."""
    folder = tmp_path_factory.mktemp("cola")
    spec = {"name": "c", "datasets": [{**REGISTRY_ENTRIES["glue_cola"], "eval_limit": 40}], "prompting": {"methods": ["score"]}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    config = loaded.datasets[0]
    return load_dataset_frame(loaded, config), config


def _without_evaluation_labels(examples: pd.DataFrame, eval_split: str) -> list[pd.DataFrame]:
    """The examples with the evaluation labels scrambled, and with the evaluation rows removed."""
    scrambled = examples.copy()
    evaluation = scrambled["split"] == eval_split
    rng = np.random.default_rng(7)
    scrambled.loc[evaluation, "label"] = rng.permutation(1 - scrambled.loc[evaluation, "label"].to_numpy())
    return [scrambled, examples[~evaluation].copy()]


def test_calibration_sample_is_train_only_and_stratified(cola):
    examples, config = cola
    settings = CalibrationSettings(train_examples=64, seed=5)
    sample = calibration_sample(examples, config, settings)
    assert len(sample) == 64
    assert set(sample["split"]) == {"train"}
    assert sample["idx"].is_unique
    # Train has 2528 unacceptable and 6023 acceptable sentences: 29.6% of 64 rounds to 19.
    assert sample["label"].value_counts().to_dict() == {1: 45, 0: 19}
    assert calibration_sample(examples, config, settings)["idx"].tolist() == sample["idx"].tolist()
    other_seed = calibration_sample(examples, config, CalibrationSettings(train_examples=64, seed=6))
    assert other_seed["idx"].tolist() != sample["idx"].tolist()


def test_calibration_sample_ignores_evaluation_rows(cola):
    examples, config = cola
    settings = CalibrationSettings(train_examples=64, seed=0)
    expected = calibration_sample(examples, config, settings)["idx"].tolist()
    for changed in _without_evaluation_labels(examples, config.eval_split):
        assert calibration_sample(changed, config, settings)["idx"].tolist() == expected


def _hash_scores(texts: pd.Series) -> list[str]:
    """Deterministic stand-in choice scores from each text's sha256, for the pure-logic fit test."""
    rows = []
    for text in texts:
        digest = hashlib.sha256(text.encode()).digest()
        rows.append(json.dumps([-1.0 - digest[0] / 64, -0.5 - digest[1] / 64]))
    return rows


def test_fit_ignores_evaluation_rows(cola):
    examples, config = cola
    settings = CalibrationSettings(train_examples=32, seed=1)

    def fit(frame):
        inputs = calibration_inputs(frame, config, settings)
        scored = inputs.assign(choice_scores=_hash_scores(inputs["sentence"]))
        return inputs, fit_from_scored_inputs(scored, N_CLASSES)

    inputs, expected = fit(examples)
    assert set(inputs.loc[inputs["kind"] == TRAIN_SAMPLE, "split"]) == {config.train_split}
    assert inputs.loc[inputs["kind"] == CONTENT_FREE, "sentence"].tolist() == settings.content_free_inputs
    for changed in _without_evaluation_labels(examples, config.eval_split):
        changed_inputs, fitted = fit(changed)
        assert changed_inputs["idx"].tolist() == inputs["idx"].tolist()
        assert fitted.content_free_probabilities.tolist() == expected.content_free_probabilities.tolist()
        assert fitted.class_bias.tolist() == expected.class_bias.tolist()


def test_content_free_examples_fill_every_text_field():
    config = load_rte_config()
    settings = CalibrationSettings(content_free_inputs=["N/A", ""])
    frame = content_free_examples(config, settings)
    assert frame["idx"].tolist() == [-1, -2]
    assert frame["sentence1"].tolist() == ["N/A", ""]
    assert frame["sentence2"].tolist() == ["N/A", ""]


def load_rte_config():
    from prompt_ft_assets.spec import DatasetSpec

    return DatasetSpec.model_validate(REGISTRY_ENTRIES["glue_rte"])


def test_calibrated_rows_side_by_side():
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = _biased_scores(labels, shift=2.0)
    predictions = pd.DataFrame({
        "dataset": "d", "split": "validation", "idx": range(6), "label": labels, "model": "m", "template": "t",
        "method": "score", "prediction": [1] * 6, "choice_scores": [json.dumps(row.tolist()) for row in scores],
    })
    fit = fit_calibration(scores, labels, np.array([[-3.0, -1.0]]), N_CLASSES)
    calibrated = calibrated_prediction_rows(predictions, fit, N_CLASSES)
    assert calibrated.groupby("calibration").size().to_dict() == {"contextual": 6, "raw": 6, "threshold": 6}
    assert calibrated.loc[calibrated["calibration"] == "raw", "prediction"].tolist() == [1] * 6
    rows = {row["calibration"]: row for row in calibration_metric_rows(calibrated, fit, N_CLASSES, seed=0)}
    assert rows["raw"]["flag_one_class"]
    assert rows["contextual"]["macro_f1"] == 1.0
    assert rows["threshold"]["macro_f1"] == 1.0
    assert json.loads(rows["threshold"]["parameters"])["class_bias"][0] == 0.0
    assert "content_free_probabilities" in json.loads(rows["contextual"]["parameters"])


@pytest.mark.slow
def test_score_calibration_never_reads_evaluation_labels(tmp_path, state_dir):
    from dagster import DagsterInstance, MultiPartitionKey, materialize

    from prompt_ft_assets.assets.calibrated import score_calibration
    from prompt_ft_assets.assets.data import dataset
    from prompt_ft_assets.assets.prompted import prompt_predictions
    from prompt_ft_assets.partitions import calibration_partition_keys, sync_partitions
    from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
    from prompt_ft_assets.store import ResultsStore

    spec_data = {
        "name": "calibration",
        "datasets": [{**REGISTRY_ENTRIES["glue_cola"], "eval_limit": 8, "templates": ["Make sense yes no"]}],
        "prompt_models": [SMOLLM2],
        "prompting": {"methods": ["score"], "calibration": {"train_examples": 16, "seed": 0}},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    spec = load_spec(spec_path)
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, spec)
    resources = {"experiment": ExperimentResource(spec_path=str(spec_path)),
                 "results": ResultsStoreResource(root=str(state_dir / "results"))}
    assert materialize([dataset], partition_key="glue_cola", instance=instance, resources=resources).success
    [key] = calibration_partition_keys(spec)
    assert key == MultiPartitionKey({"dataset": "glue_cola", "prompt_run": "smollm2-135m__make_sense_yes_no__score"})
    assert materialize([prompt_predictions], partition_key=key, instance=instance, resources=resources).success
    assert materialize([score_calibration], partition_key=key, instance=instance, resources=resources).success

    store = ResultsStore(state_dir / "results")
    inputs = store.read("calibration_inputs", str(key))
    fits = store.read("calibration_fits", str(key))
    assert len(inputs) == 16 + 3
    assert set(inputs.loc[inputs["kind"] == TRAIN_SAMPLE, "split"]) == {"train"}
    assert set(inputs.loc[inputs["kind"] == CONTENT_FREE, "split"]) == {"content_free"}
    assert json.loads(fits["train_sample_idx"].iloc[0]) == inputs.loc[inputs["kind"] == TRAIN_SAMPLE, "idx"].tolist()
    metrics = store.read("calibration_metrics", str(key))
    assert metrics["calibration"].tolist() == ["raw", "contextual", "threshold"]
    raw = store.read("prompt_run_metrics", str(key)) if store.exists("prompt_run_metrics", str(key)) else None
    calibrated = store.read("calibrated_predictions", str(key))
    assert len(calibrated) == 8 * 3
    stored = store.read("prompt_predictions", str(key)).sort_values("idx")
    assert calibrated[calibrated["calibration"] == "raw"].sort_values("idx")["prediction"].tolist() == stored["prediction"].tolist()
    assert raw is None

    # Scramble every evaluation label the store holds, in the examples and the predictions, then calibrate again.
    examples = store.read("examples", "glue_cola")
    evaluation = examples["split"] == "validation"
    examples.loc[evaluation, "label"] = 1 - examples.loc[evaluation, "label"]
    store.write("examples", "glue_cola", examples)
    store.write("prompt_predictions", str(key), stored.assign(label=1 - stored["label"]))
    assert materialize([score_calibration], partition_key=key, instance=instance, resources=resources).success

    again = store.read("calibration_fits", str(key))
    assert again["parameters"].tolist() == fits["parameters"].tolist()
    assert again["train_sample_idx"].tolist() == fits["train_sample_idx"].tolist()
    assert store.read("calibration_inputs", str(key))["from_cache"].all()
    relabeled = store.read("calibration_metrics", str(key))
    assert relabeled["macro_f1"].tolist() != metrics["macro_f1"].tolist() or metrics["macro_f1"].nunique() == 1


def _calibration_metric_table() -> pd.DataFrame:
    rows = []
    for model in ("smollm2-135m", "gemma3-270m"):
        for template, raw in (("editing", 0.41), ("make_sense_yes_no", 0.40)):
            for calibration, f1 in (("raw", raw), ("contextual", raw + 0.1), ("threshold", raw + 0.15)):
                rows.append({"dataset": "glue_cola", "model": model, "template": template, "shots": 0,
                             "calibration": calibration, "macro_precision": f1, "macro_recall": f1, "macro_f1": f1,
                             "flag_one_class": calibration == "raw", "flag_near_chance": False, "flag_high_invalid": False})
    return pd.DataFrame(rows)


def test_calibration_table_one_row_per_calibration():
    from prompt_ft_assets.breakdown_tables import calibration_table

    table = calibration_table(_calibration_metric_table())
    assert len(table) == 2 * 2 * 3
    assert set(table["n"]) == {1}
    raw = table[table["calibration"] == "raw"]
    assert raw["flagged_runs"].tolist() == [1, 1, 1, 1]
    assert calibration_table(_calibration_metric_table().drop(columns="shots"))["shots"].tolist() == [0] * 12


def test_calibration_figure_drawn(tmp_path):
    from prompt_ft_assets.assets.analysis import _draw
    from prompt_ft_assets.breakdown_tables import calibration_table

    path = _draw("f1_by_calibration", calibration_table(_calibration_metric_table()), tmp_path / "f1_by_calibration.png")
    assert path.stat().st_size > 10_000


def test_calibration_partitions_are_score_partitions(tmp_path):
    from prompt_ft_assets.partitions import calibration_partition_keys, prompted_partition_keys

    spec = {"name": "c", "datasets": [REGISTRY_ENTRIES["glue_cola"]], "prompt_models": [SMOLLM2],
            "prompting": {"methods": ["generate", "score"], "runs": 2}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    loaded = load_spec(path)
    keys = [key.keys_by_dimension["prompt_run"] for key in calibration_partition_keys(loaded)]
    assert keys == ["smollm2-135m__editing__score"]
    assert len(prompted_partition_keys(loaded)) == 3
    spec["prompting"]["calibration"] = None
    path.write_text(yaml.safe_dump(spec))
    assert calibration_partition_keys(load_spec(path)) == []
