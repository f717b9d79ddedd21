"""The experiment report: one self-contained HTML page from stored rows, tables and figures.

`render_report` is pure: it takes frames and PNG bytes and returns the page with the frames it
computed, so the asset only reads the store and writes the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .report_content import (
    ENCODER_PAIRING,
    PROMPTED_PAIRING,
    StatisticsSettings,
    cost_per_thousand,
    final_comparison,
    finetune_settings,
    flagged_runs,
    invalid_output_rates,
    model_settings,
    paired_tests,
    provenance_settings,
    seed_settings,
)
from .metrics import HIGH_INVALID_RATE
from .report_html import Section, escape, figure_html, page_html, paragraph, preformatted, table_html
from .statistics import OlsFit, fit_prompted_f1_model

# Summary-table columns the report leaves out: '<metric>_mean' and '_std' repeat the 'mean +- std'
# text column, and the medians of precision and recall add little next to F1's.
_HIDDEN_SUFFIXES = ("_mean", "_std", "_median")
_SHOWN_DERIVED = ("macro_f1_median", "invalid_rate_mean")


@dataclass
class ReportInputs:
    """Everything the page shows, read from the results store, the spec and the figures folder."""

    experiment: str
    description: str
    spec_text: str
    state_dir: str
    generated_at: str
    run_metrics: pd.DataFrame
    finetune_metrics: pd.DataFrame
    prompt_predictions: pd.DataFrame
    finetune_predictions: pd.DataFrame
    questions: dict[str, str]
    summary_tables: dict[str, pd.DataFrame]
    # Figure name -> (summary table it draws, PNG bytes or None when not drawn).
    figures: dict[str, tuple[str, bytes | None]]
    n_classes: dict[str, int]
    statistics: StatisticsSettings = field(default_factory=StatisticsSettings)


@dataclass
class RenderedReport:
    html: str
    comparison: pd.DataFrame
    paired: pd.DataFrame
    flagged: pd.DataFrame
    fits: dict[str, OlsFit | str]


def display_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Keep the summary-table columns a reader needs. The CSV files under data/tables keep them all."""
    keep = [c for c in table.columns if not c.endswith(_HIDDEN_SUFFIXES) or c in _SHOWN_DERIVED]
    return table[keep]


def fit_models(run_metrics: pd.DataFrame) -> dict[str, OlsFit | str]:
    """Fit OLS of prompted F1 per dataset; a dataset that cannot be fitted maps to the reason."""
    fits: dict[str, OlsFit | str] = {}
    if run_metrics.empty:
        return fits
    for dataset, runs in run_metrics.groupby("dataset", sort=True):
        try:
            fits[dataset] = fit_prompted_f1_model(runs)
        except ValueError as error:
            fits[dataset] = str(error)
    return fits


def _ols_body(fits: dict[str, OlsFit | str]) -> str:
    parts = [paragraph(
        "Ordinary least squares of each prompted run's macro F1 on log(params_b), family, generation, "
        "is_moe and template, per dataset. A term with one level in the stored runs is dropped, and so is "
        "a term that only repeats the split of an earlier one, because its coefficient is not identifiable. "
        "Runs of one configuration are not independent, so the standard errors are optimistic."
    )]
    if not fits:
        parts.append(paragraph("no prompted runs stored yet", "empty"))
    for dataset, fit in fits.items():
        parts.append(f"<h3>dataset {escape(dataset)}</h3>")
        if isinstance(fit, str):
            parts.append(paragraph(f"not fitted: {fit}", "empty"))
            continue
        r_squared = "not defined" if pd.isna(fit.r_squared) else f"{fit.r_squared:.3f}"
        parts.append(paragraph(
            f"formula: {fit.formula}; {fit.n_obs} runs, residual degrees of freedom {fit.residual_df:g}, "
            f"R\u00b2 {r_squared}"
        ))
        dropped = pd.DataFrame({"term": list(fit.dropped), "why dropped": list(fit.dropped.values())})
        parts.append(table_html(dropped, empty="no term dropped"))
        parts.append(table_html(fit.table))
    return "".join(parts)


def _question_sections(inputs: ReportInputs) -> list[Section]:
    figures_by_table: dict[str, list[tuple[str, bytes | None]]] = {}
    for name, (table_name, png) in inputs.figures.items():
        figures_by_table.setdefault(table_name, []).append((name, png))
    sections = []
    for name, question in inputs.questions.items():
        table = inputs.summary_tables.get(name, pd.DataFrame())
        body = [paragraph(f"table {name}; full columns in tables/{name}.csv under the state folder")]
        body.append(table_html(display_columns(table) if not table.empty else table))
        for figure_name, png in figures_by_table.get(name, []):
            body.append(figure_html(png, f"{figure_name}: {question}"))
        sections.append(Section(f"table-{name}", question, "".join(body)))
    return sections


def _comparison_body(comparison: pd.DataFrame, paired: pd.DataFrame, statistics: StatisticsSettings) -> str:
    return "".join([
        paragraph(
            "Mean macro F1 with a percentile bootstrap 95% interval: over runs for the best prompted "
            "configuration (chosen on the evaluation split, so an optimistic estimate), over seeds for "
            f"each encoder. {statistics.mean_resamples} resamples, seed {statistics.seed}. With a handful "
            "of runs or seeds the interval understates the uncertainty, and with one it is not defined."
        ),
        table_html(comparison),
        "<h3>Paired tests on the same evaluation examples</h3>",
        paragraph(
            f"Prompted side: {PROMPTED_PAIRING}. Encoder side: {ENCODER_PAIRING}. Examples are aligned "
            "by (dataset, idx). f1_difference is encoder minus prompted macro F1, with a paired bootstrap "
            f"95% interval and two-sided p-value ({statistics.paired_resamples} resamples, seed "
            f"{statistics.seed}). McNemar's exact test uses b = encoder right and prompted wrong, "
            "c = the reverse; an invalid answer counts as wrong."
        ),
        table_html(paired, empty="no prompted and finetuned predictions on common examples stored yet"),
    ])


def _settings_body(inputs: ReportInputs) -> str:
    run_metrics, finetune_metrics = inputs.run_metrics, inputs.finetune_metrics
    templates = (
        run_metrics.groupby("dataset")["template"].unique().map(lambda names: ", ".join(sorted(names))).reset_index()
        if not run_metrics.empty else pd.DataFrame()
    )
    statistics = pd.DataFrame([vars(inputs.statistics)])
    return "".join([
        "<h3>Prompt models</h3>", table_html(model_settings(run_metrics)),
        "<h3>Templates</h3>", table_html(templates),
        "<h3>Seeds</h3>", table_html(seed_settings(run_metrics, finetune_metrics)),
        "<h3>Finetuning settings</h3>", table_html(finetune_settings(finetune_metrics)),
        "<h3>Report statistics</h3>", table_html(statistics),
        "<h3>Code and library versions of the stored rows</h3>",
        table_html(provenance_settings(run_metrics, finetune_metrics)),
        "<h3>Experiment spec</h3>",
        paragraph(
            "The file as read when this report was written. If it changed after the runs, the settings "
            "stored with the rows, in the tables above, are the ones the runs used."
        ),
        preformatted(inputs.spec_text),
    ])


def render_report(inputs: ReportInputs) -> RenderedReport:
    """Build the page and return it with the comparison, paired tests, flags and fits it shows."""
    statistics = inputs.statistics
    comparison = final_comparison(inputs.run_metrics, inputs.finetune_metrics, statistics)
    paired = paired_tests(
        inputs.run_metrics, inputs.prompt_predictions, inputs.finetune_predictions, inputs.n_classes, statistics
    )
    flagged = flagged_runs(inputs.run_metrics, inputs.finetune_metrics)
    fits = fit_models(inputs.run_metrics)
    n_prompted = len(inputs.run_metrics)
    n_finetuned = len(inputs.finetune_metrics)

    sections = [
        Section("comparison", "Prompted versus finetuned", _comparison_body(comparison, paired, statistics)),
        *_question_sections(inputs),
        Section("invalid", "Invalid outputs", "".join([
            paragraph("Share of prompted outputs that parse to no class. Every metric counts them as wrong."),
            table_html(invalid_output_rates(inputs.run_metrics, inputs.prompt_predictions)),
        ])),
        Section("cost", "Cost per 1,000 classifications", "".join([
            paragraph(
                "Seconds of compute per 1,000 evaluation examples, from the timings stored with the rows, "
                "on the machine and device that produced them (see basis). Prompted: the wall time during "
                "which each run was generating, divided by its outputs. A batched backend generates several "
                "outputs at once, so mean_latency_s, the wait for one output, is longer than the cost per "
                "output. Finetuned: mean inference time per example. Training is a one-off cost, in "
                "train_seconds_mean."
            ),
            table_html(cost_per_thousand(inputs.prompt_predictions, inputs.finetune_metrics)),
        ])),
        Section("flags", "Degenerate runs", "".join([
            paragraph(
                f"Flagged: {len(flagged)} of {n_prompted + n_finetuned} runs ({n_prompted} prompted, "
                f"{n_finetuned} finetuned). "
                f"one_class: every valid answer is the same class. near_chance: the bootstrap 95% interval "
                f"of the MCC contains 0. below_chance: the whole interval is below 0, so the run picks the wrong "
                f"class more often than chance would (check the template's answer choices). high_invalid: more "
                f"than {HIGH_INVALID_RATE:.0%} of the answers are invalid."
            ),
            table_html(flagged, empty="no run is flagged"),
        ])),
        Section("regression", "What explains prompted F1", _ols_body(fits)),
        Section("settings", "Settings of the run", _settings_body(inputs)),
    ]

    meta = [
        inputs.description,
        f"Generated {inputs.generated_at} from the rows stored under {inputs.state_dir} "
        f"(prompted runs: {n_prompted}, finetune runs: {n_finetuned}). The report covers every row in that "
        "folder, including rows of other specs that share it.",
    ]
    html_text = page_html(f"Prompting versus finetuning: {inputs.experiment}", [line for line in meta if line], sections)
    return RenderedReport(html=html_text, comparison=comparison, paired=paired, flagged=flagged, fits=fits)


def summary_markdown(report: RenderedReport, path: str) -> str:
    """Write a few markdown lines for the asset page: each mean F1 with its interval and the paired tests."""
    lines = []
    for _, row in report.comparison.iterrows():
        interval = "" if pd.isna(row["ci_low"]) else f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        lines.append(
            f"- **{row['dataset']}**, {row['approach']} `{row['system']}`: macro F1 {row['macro_f1_mean']:.3f}"
            f"{interval} over {row['runs_or_seeds']} runs or seeds"
        )
    for _, row in report.paired.iterrows():
        if pd.isna(row.get("f1_difference")):
            continue
        lines.append(
            f"- {row['dataset']}: `{row['encoder']}` seed {row['seed']} minus prompted vote: "
            f"{row['f1_difference']:+.3f} [{row['difference_ci_low']:+.3f}, {row['difference_ci_high']:+.3f}], "
            f"bootstrap p {row['bootstrap_p']:.3g}, McNemar p {row['mcnemar_p']:.3g} (n={row['n']})"
        )
    if not lines:
        lines.append("- no prompted or finetuned results stored yet")
    lines.append(f"- flagged runs: {len(report.flagged)}")
    lines.append(f"- report: `{path}`")
    return "\n".join(lines)
