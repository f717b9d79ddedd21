"""Dataset statistics: per-split numbers on constructed and real data, the table against results,
and its figure."""

import json

import numpy as np
import pandas as pd
import pytest

from prompt_ft_assets.assets.analysis import _draw
from prompt_ft_assets.breakdown_tables import build_breakdown_tables
from prompt_ft_assets.dataset_statistics import class_vocabulary_jaccard, split_statistics, statistics_vs_results, vocabulary
from prompt_ft_assets.datasets_io import load_dataset_frame
from prompt_ft_assets.spec import DatasetSpec, ExperimentSpec

from .study_specs import REGISTRY_ENTRIES


def _config(dataset_id: str) -> DatasetSpec:
    return DatasetSpec.model_validate(REGISTRY_ENTRIES[dataset_id])


def _toy_examples() -> pd.DataFrame:
    return pd.DataFrame({
        "dataset": "glue_sst2",
        "split": ["train"] * 4 + ["validation"] * 2,
        "idx": [0, 1, 2, 3, 0, 1],
        "sentence": ["A good film.", "good, GOOD fun", "a bad film", "bad acting!", "fine", "not fine at all"],
        "label": [1, 1, 0, 0, 1, 0],
        "in_sample": [True, True, False, False, True, True],
    })


def test_vocabulary_strips_punctuation_and_case():
    assert vocabulary(pd.Series(["A good film.", "good, GOOD fun", "\u201cquoted\u201d \u2014"])) == {
        "a", "good", "film", "fun", "quoted"}


def test_split_statistics_on_constructed_rows():
    table = split_statistics(_toy_examples(), _config("glue_sst2")).set_index("role")
    train = table.loc["train"]
    assert train["examples"] == 4
    assert train["sample_examples"] == 2
    assert json.loads(train["label_counts"]) == {"negative": 2, "positive": 2}
    assert train["minority_class_share"] == 0.5
    assert train["mean_tokens"] == pytest.approx((3 + 3 + 3 + 2) / 4)
    assert train["median_tokens"] == 3.0
    assert train["mean_chars"] == pytest.approx((12 + 14 + 10 + 11) / 4)
    # Class vocabularies {a, good, film, fun} and {a, bad, film, acting} share a and film: 2 of 6 words.
    assert train["class_vocabulary_jaccard"] == pytest.approx(2 / 6)
    evaluation = table.loc["evaluation"]
    assert evaluation["split"] == "validation"
    assert evaluation["mean_tokens"] == 2.5
    assert evaluation["class_vocabulary_jaccard"] == pytest.approx(1 / 4)


def test_jaccard_of_one_class_is_undefined():
    assert np.isnan(class_vocabulary_jaccard(pd.Series(["a b"]), pd.Series([1])))


def test_pair_fields_are_joined():
    frame = pd.DataFrame({"split": ["train", "train"], "idx": [0, 1], "sentence1": ["a b", "c"],
                          "sentence2": ["d", "e f g"], "label": [0, 1]})
    table = split_statistics(frame, _config("glue_rte"))
    assert table["mean_tokens"].tolist() == [3.5]
    assert table["mean_chars"].tolist() == [6.0]
    assert table["sample_examples"].tolist() == [2]


def test_cola_statistics(cola_dir):
    spec = ExperimentSpec.model_validate({"name": "s", "datasets": [REGISTRY_ENTRIES["glue_cola"]]})
    config = spec.datasets[0]
    table = split_statistics(load_dataset_frame(spec, config), config).set_index("role")
    assert table.loc["train", "examples"] == 8551
    assert table.loc["evaluation", "examples"] == 1043
    assert json.loads(table.loc["train", "label_counts"]) == {"unacceptable": 2528, "acceptable": 6023}
    assert table.loc["train", "minority_class_share"] == pytest.approx(2528 / 8551)
    assert 5 < table.loc["train", "mean_tokens"] < 15
    assert 0 < table.loc["train", "class_vocabulary_jaccard"] < 1


def _statistics() -> pd.DataFrame:
    rows = []
    for dataset, size, share in (("glue_cola", 8551, 0.3), ("glue_rte", 2490, 0.5), ("glue_sst2", 67349, 0.44)):
        for role, examples in (("train", size), ("evaluation", 100)):
            rows.append({"dataset": dataset, "split": role, "role": role, "examples": examples,
                         "minority_class_share": share, "mean_tokens": 9.0, "median_tokens": 8.0, "mean_chars": 40.0,
                         "class_vocabulary_jaccard": 0.3})
    return pd.DataFrame(rows)


def _metrics() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    run_metrics = pd.DataFrame([
        {"dataset": "glue_cola", "method": "score", "model": "smollm2", "template": "t1", "shots": 0, "run": 0, "macro_f1": 0.40},
        {"dataset": "glue_cola", "method": "score", "model": "smollm2", "template": "t2", "shots": 0, "run": 0, "macro_f1": 0.45},
        {"dataset": "glue_sst2", "method": "score", "model": "smollm2", "template": "t1", "shots": 0, "run": 0, "macro_f1": 0.70},
    ])
    finetune = pd.DataFrame([
        {"dataset": "glue_cola", "encoder": "minilm", "seed": seed, "train_size": pd.NA, "macro_f1": f1,
         "flag_one_class": seed == 0}
        for seed, f1 in ((0, 0.6), (1, 0.7))
    ] + [{"dataset": "glue_cola", "encoder": "minilm", "seed": 0, "train_size": 64, "macro_f1": 0.99}])
    finetune["train_size"] = finetune["train_size"].astype("Int64")
    calibration = pd.DataFrame([
        {"dataset": "glue_cola", "model": "smollm2", "template": "t1", "calibration": c, "macro_f1": f1}
        for c, f1 in (("raw", 0.9), ("contextual", 0.5), ("threshold", 0.55))
    ])
    return run_metrics, finetune, calibration


def test_statistics_vs_results_one_row_per_dataset():
    run_metrics, finetune, calibration = _metrics()
    table = build_breakdown_tables(pd.DataFrame(), pd.DataFrame(), _statistics(), run_metrics, finetune)["dataset_vs_results"]
    table = table.set_index("dataset")
    assert list(table.index) == ["glue_cola", "glue_rte", "glue_sst2"]
    assert table.loc["glue_cola", "train_examples"] == 8551
    assert table.loc["glue_cola", "eval_examples"] == 100
    # The 64-example run is left out: only full-train runs count, as in the encoder tables.
    assert table.loc["glue_cola", "best_finetune_f1"] == pytest.approx(0.65)
    assert table.loc["glue_cola", "best_prompted_f1"] == pytest.approx(0.45)
    assert table.loc["glue_cola", "best_prompted"] == "score / smollm2 / t2 / 0"
    assert table.loc["glue_cola", "finetune_minus_prompted"] == pytest.approx(0.20)
    assert not table.loc["glue_cola", "best_prompted_flagged"]
    assert table.loc["glue_cola", "best_finetune_flagged"]
    assert np.isnan(table.loc["glue_rte", "best_prompted_f1"])
    assert np.isnan(table.loc["glue_sst2", "best_finetune_f1"])


def test_best_calibrated_skips_raw_rows():
    run_metrics, finetune, calibration = _metrics()
    table = statistics_vs_results(_statistics(), run_metrics, finetune, calibration).set_index("dataset")
    assert table.loc["glue_cola", "best_calibrated_f1"] == pytest.approx(0.55)
    assert table.loc["glue_cola", "best_calibrated"] == "smollm2 / t1 / threshold"


def test_statistics_table_grows_with_datasets():
    statistics = _statistics()
    run_metrics, finetune, _ = _metrics()
    fewer = statistics_vs_results(statistics[statistics["dataset"] != "glue_rte"], run_metrics, finetune)
    assert len(fewer) == 2
    assert len(statistics_vs_results(statistics, run_metrics, finetune)) == 3


def test_statistics_figure_drawn(tmp_path):
    run_metrics, finetune, calibration = _metrics()
    table = statistics_vs_results(_statistics(), run_metrics, finetune, calibration)
    path = _draw("dataset_statistics_vs_f1", table, tmp_path / "stats.png")
    assert path.stat().st_size > 20_000
    without_results = statistics_vs_results(_statistics(), pd.DataFrame(), pd.DataFrame())
    assert _draw("dataset_statistics_vs_f1", without_results, tmp_path / "no_results.png").is_file()
    assert _draw("dataset_statistics_vs_f1", pd.DataFrame(), tmp_path / "empty.png").is_file()
