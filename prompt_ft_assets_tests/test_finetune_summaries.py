"""Learning-curve summaries: the by_train_size table, its figure, and encoder tables on full-train runs."""

import pandas as pd
import pytest

from prompt_ft_assets.assets.analysis import FIGURES, _draw, train_size_series
from prompt_ft_assets.summaries import QUESTIONS, build_summary_tables, full_train_runs, train_size_table


def _finetune_rows() -> pd.DataFrame:
    rows = []
    for encoder, params, base in (("minilm-l6", 22.7, 0.45), ("ettin-17m", 17.0, 0.5)):
        for train_size, n_train, gain in ((64, 64, 0.0), (256, 256, 0.1), (None, 2000, 0.2)):
            for seed in (0, 1):
                f1 = base + gain + 0.01 * seed
                rows.append(
                    {
                        "dataset": "glue_cola", "method": "finetune", "encoder": encoder, "family": "bert",
                        "params_m": params, "seed": seed, "train_size": train_size, "train_examples": n_train,
                        "macro_precision": f1, "macro_recall": f1, "macro_f1": f1,
                        "flag_one_class": train_size == 64, "flag_near_chance": False, "flag_high_invalid": False,
                    }
                )
    frame = pd.DataFrame(rows)
    frame["train_size"] = frame["train_size"].astype("Int64")
    return frame


def test_train_size_table_one_row_per_size():
    table = train_size_table(_finetune_rows())
    assert len(table) == 2 * 3
    assert set(table["method"]) == {"finetune"}
    minilm = table[table["model"] == "minilm-l6"].sort_values("train_examples")
    assert minilm["train_examples"].tolist() == [64, 256, 2000]
    assert minilm["n"].tolist() == [2, 2, 2]
    assert minilm["macro_f1_mean"].tolist() == pytest.approx([0.455, 0.555, 0.655])
    assert minilm["flagged_runs"].tolist() == [2, 0, 0]


def test_train_size_table_joins_other_methods():
    kshot = pd.DataFrame(
        {
            "dataset": ["glue_cola"] * 2, "method": ["kshot"] * 2, "model": ["smollm2-135m"] * 2,
            "family": ["smollm2"] * 2, "train_examples": [8, 8],
            "macro_precision": [0.4, 0.5], "macro_recall": [0.4, 0.5], "macro_f1": [0.4, 0.5],
        }
    )
    table = train_size_table(_finetune_rows(), kshot)
    row = table[table["method"] == "kshot"]
    assert row["train_examples"].tolist() == [8]
    assert row["macro_f1_mean"].tolist() == pytest.approx([0.45])


def test_train_size_table_reads_older_rows():
    older = _finetune_rows().drop(columns=["method", "family", "train_size"])
    table = train_size_table(older)
    assert set(table["method"]) == {"finetune"}
    assert len(table) == 6


def test_encoder_tables_use_full_train_runs():
    metrics = _finetune_rows()
    assert len(full_train_runs(metrics)) == 4
    tables = build_summary_tables(pd.DataFrame(), pd.DataFrame(), metrics)
    by_encoder = tables["by_encoder"]
    assert by_encoder["n"].tolist() == [2, 2]
    assert by_encoder["macro_f1_mean"].tolist() == pytest.approx([0.705, 0.655])
    assert len(tables["by_train_size"]) == 6
    assert "by_train_size" in QUESTIONS


def test_full_train_runs_keeps_rows_without_column():
    older = _finetune_rows().drop(columns=["train_size"])
    assert len(full_train_runs(older)) == len(older)


def test_train_size_series_labels():
    table = train_size_table(_finetune_rows())
    assert set(train_size_series(table)["series"]) == {"finetune / minilm-l6", "finetune / ettin-17m"}
    two_datasets = pd.concat([table, table.assign(dataset="glue_sst2")], ignore_index=True)
    assert "glue_sst2 / finetune / ettin-17m" in set(train_size_series(two_datasets)["series"])


def test_train_size_figure_drawn(tmp_path):
    assert FIGURES["f1_by_train_size"] == "by_train_size"
    path = _draw("f1_by_train_size", train_size_table(_finetune_rows()), tmp_path / "curve.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    empty = _draw("f1_by_train_size", pd.DataFrame(), tmp_path / "empty.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"
