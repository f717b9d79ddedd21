"""Analysis assets: summary tables per research question and one figure per table."""


import base64
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, asset, multi_asset

from ..breakdown_plots import grouped_bar_figure, statistics_figure
from ..breakdown_tables import build_breakdown_tables
from ..calibration import CALIBRATIONS
from ..contamination_plots import contamination_figure
from ..contamination_tables import contamination_table
from ..prompt_setting_plots import answer_format_figure, temperature_figure
from ..prompt_setting_tables import build_prompt_setting_tables
from ..domains import ALL_DOMAINS, IN_DOMAIN, OUT_OF_DOMAIN
from ..paths import figures_dir, tables_dir
from ..plotting import bar_figure, comparison_figure, line_figure
from ..previews import markdown_preview
from ..resources import ResultsStoreResource
from ..store import ResultsStore, atomic_write_text
from ..summaries import QUESTIONS, build_summary_tables, default_setting_rows
from .aggregation import VOTE_METRICS_TABLE, vote_aggregates
from .breakdowns import DATASET_STATISTICS_TABLE, DOMAIN_METRICS_TABLE, dataset_statistics, domain_metrics
from .calibrated import CALIBRATION_METRICS_TABLE, score_calibration
from .contamination import CONTAMINATION_SUMMARY_TABLE, contamination_probe
from .finetuned import FINETUNE_METRICS_TABLE, finetune_metrics
from .prompted import RUN_METRICS_TABLE, prompt_run_metrics

SUMMARY_TABLE_PREFIX = "summary_"
PREVIEW_COLUMNS = ("n", "macro_precision", "macro_recall", "macro_f1", "flagged_runs")

# Each figure: the summary table it draws, and how.
FIGURES = {
    "f1_by_prompt_model": "by_prompt_model",
    "f1_by_prompt": "by_prompt",
    "f1_by_model": "by_model",
    "f1_by_vote_k": "by_vote_k",
    "f1_by_family": "by_family",
    "f1_by_size": "by_size",
    "f1_dense_vs_moe": "dense_vs_moe",
    "f1_by_encoder": "by_encoder",
    "f1_by_train_size": "by_train_size",
    "prompted_vs_finetuned": "comparison",
    "f1_by_calibration": "by_calibration",
    "f1_by_domain": "by_domain",
    "dataset_statistics_vs_f1": "dataset_vs_results",
    "contamination_vs_f1": "by_contamination",
    "f1_by_temperature": "by_temperature",
    "f1_validity_cost_by_answer_format": "by_answer_format",
}


def read_summary_table(store: ResultsStore, name: str) -> pd.DataFrame:
    return store.read(SUMMARY_TABLE_PREFIX + name, "all") if store.exists(SUMMARY_TABLE_PREFIX + name, "all") else pd.DataFrame()


@asset(
    deps=[prompt_run_metrics, vote_aggregates, finetune_metrics, score_calibration, domain_metrics, dataset_statistics,
          contamination_probe],
    group_name="analysis",
    kinds={"duckdb", "parquet"},
)
def summary_tables(context: AssetExecutionContext, results: ResultsStoreResource) -> MaterializeResult:
    """Mean +- std and median of macro precision, recall and F1 per research question, written as
    Parquet in the store, and as CSV and markdown under data/tables."""
    store = results.store()
    run_metrics = store.read_table(RUN_METRICS_TABLE)
    finetune_results = store.read_table(FINETUNE_METRICS_TABLE)
    tables = build_summary_tables(run_metrics, store.read_table(VOTE_METRICS_TABLE), finetune_results)
    tables.update(build_breakdown_tables(
        store.read_table(CALIBRATION_METRICS_TABLE), store.read_table(DOMAIN_METRICS_TABLE),
        store.read_table(DATASET_STATISTICS_TABLE), default_setting_rows(run_metrics), finetune_results,
    ))
    tables["by_contamination"] = contamination_table(store.read_table(CONTAMINATION_SUMMARY_TABLE), run_metrics)
    tables.update(build_prompt_setting_tables(run_metrics))
    output = tables_dir()
    output.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, object] = {}
    sections = []
    for name, table in tables.items():
        if len(table.columns) == 0:
            # Nothing feeds this table yet (a study without finetunes has no comparison), and Parquet
            # cannot hold a frame without columns, so a stale file is removed instead.
            store.delete(SUMMARY_TABLE_PREFIX + name, "all")
        else:
            store.write(SUMMARY_TABLE_PREFIX + name, "all", table)
        # Through a temporary file, so a killed run leaves the previous CSV and markdown, never half of one.
        atomic_write_text(output / f"{name}.csv", table.to_csv(index=False))
        markdown = markdown_preview(table, rows=len(table)) if not table.empty else "_no results yet_"
        atomic_write_text(output / f"{name}.md", f"# {QUESTIONS[name]}\n\n{markdown}\n")
        metadata[f"{name}_rows"] = len(table)
        shown = [c for c in table.columns if not c.endswith(("_mean", "_std", "_median")) and c not in ("models",)]
        sections.append(f"### {name}: {QUESTIONS[name]}\n\n{markdown_preview(table[shown]) if not table.empty else '_no results yet_'}")
    views = store.write_views_database(results.views_database)
    context.log.info("wrote %d summary tables to %s", len(tables), output)
    comparison = tables["comparison"]
    if not comparison.empty:
        best = comparison.loc[comparison["best_template_f1_mean"].idxmax()]
        metadata["best_prompted"] = f"{best['model']} / {best['best_template']}: {best['best_template_f1']}"
    encoders = tables["by_encoder"]
    if not encoders.empty:
        metadata["encoders"] = MetadataValue.json(dict(zip(encoders["encoder"], encoders["macro_f1"])))
    metadata["tables_dir"] = MetadataValue.path(str(output))
    metadata["views_database"] = MetadataValue.path(str(results.views_database))
    metadata["views"] = MetadataValue.json(views)
    metadata["preview"] = MetadataValue.md("\n\n".join(sections))
    return MaterializeResult(metadata=metadata)


def _draw(name: str, table: pd.DataFrame, path: Path) -> Path:
    title = QUESTIONS[FIGURES[name]]
    if name == "f1_by_prompt_model":
        return bar_figure(table, ["dataset", "model", "template"], title, path)
    if name == "f1_by_prompt":
        return bar_figure(table, ["dataset", "template"], title, path)
    if name == "f1_by_model":
        return bar_figure(table, ["dataset", "model"], title, path)
    if name == "f1_by_vote_k":
        frame = table.assign(series=table["dataset"] + " / " + table["model"]) if not table.empty else table
        return line_figure(frame, "k", "series", title, path)
    if name == "f1_by_family":
        return bar_figure(table, ["dataset", "family"], title, path)
    if name == "f1_by_size":
        frame = table.assign(series=table["dataset"]) if not table.empty else table
        return line_figure(frame, "params_b", "series", title, path, log_x=True)
    if name == "f1_dense_vs_moe":
        frame = table.assign(kind=table["is_moe"].map({True: "MoE", False: "dense"})) if not table.empty else table
        return bar_figure(frame, ["dataset", "kind"], title, path)
    if name == "f1_by_encoder":
        frame = table.assign(series=table["dataset"]) if not table.empty else table
        return line_figure(frame, "params_m", "series", title, path, log_x=True)
    if name == "f1_by_train_size":
        return line_figure(train_size_series(table), "train_examples", "series", title, path, log_x=True,
                           x_label="labeled examples (finetune train size or k shots)")
    if name == "f1_by_calibration":
        return grouped_bar_figure(table, ["dataset", "model", "template", *_shots_label(table)], "calibration",
                                  list(CALIBRATIONS), title, path)
    if name == "f1_by_domain":
        return grouped_bar_figure(table, ["dataset", "method", "calibration", "model", *_shots_label(table)], "domain",
                                  [ALL_DOMAINS, IN_DOMAIN, OUT_OF_DOMAIN], title, path)
    if name == "dataset_statistics_vs_f1":
        return statistics_figure(table, title, path)
    if name == "contamination_vs_f1":
        return contamination_figure(table, title, path)
    if name == "f1_by_temperature":
        return temperature_figure(table, title, path)
    if name == "f1_validity_cost_by_answer_format":
        return answer_format_figure(table, title, path)
    return comparison_figure(table, title, path)


def _shots_label(table: pd.DataFrame) -> list[str]:
    """["shots"] when some row is k-shot, so zero-shot-only figures leave the column out of their labels."""
    return ["shots"] if "shots" in table and (table["shots"] != 0).any() else []


def train_size_series(table: pd.DataFrame) -> pd.DataFrame:
    """The learning-curve table with one series per (method, model), for example 'finetune / minilm-l6'
    or 'k-shot generate / smollm2-135m', prefixed by the dataset when there are several."""
    if table.empty:
        return table
    series = table["method"].astype(str) + " / " + table["model"].astype(str)
    if table["dataset"].nunique() > 1:
        series = table["dataset"].astype(str) + " / " + series
    return table.assign(series=series)


def image_markdown(path: Path) -> str:
    """Markdown that shows a PNG inline in the Dagster UI."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{path.stem}](data:image/png;base64,{encoded})"


@multi_asset(
    specs=[AssetSpec(f"figure_{name}", deps=[summary_tables], group_name="analysis", kinds={"matplotlib"}) for name in FIGURES],
    name="figures",
    can_subset=True,
)
def figures(context: AssetExecutionContext, results: ResultsStoreResource):
    """One PNG per summary table under data/figures, shown inline on each figure's asset page."""
    store = results.store()
    output = figures_dir()
    for name, table_name in FIGURES.items():
        key = f"figure_{name}"
        if context.selected_asset_keys and not any(k.path[-1] == key for k in context.selected_asset_keys):
            continue
        table = read_summary_table(store, table_name)
        path = _draw(name, table, output / f"{name}.png")
        context.log.info("drew %s", path)
        yield MaterializeResult(
            asset_key=key,
            metadata={
                "path": MetadataValue.path(str(path)),
                "table": table_name,
                "question": QUESTIONS[table_name],
                "figure": MetadataValue.md(image_markdown(path)),
            },
        )
