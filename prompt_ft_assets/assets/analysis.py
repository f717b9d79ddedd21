"""Analysis assets: summary tables per research question and one figure per table."""


import base64
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, asset, multi_asset

from ..paths import figures_dir, tables_dir
from ..plotting import bar_figure, comparison_figure, line_figure
from ..previews import markdown_preview
from ..resources import ResultsStoreResource
from ..store import ResultsStore, atomic_write_text
from ..summaries import QUESTIONS, build_summary_tables
from .aggregation import VOTE_METRICS_TABLE, vote_aggregates
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
}


def read_summary_table(store: ResultsStore, name: str) -> pd.DataFrame:
    return store.read(SUMMARY_TABLE_PREFIX + name, "all") if store.exists(SUMMARY_TABLE_PREFIX + name, "all") else pd.DataFrame()


@asset(deps=[prompt_run_metrics, vote_aggregates, finetune_metrics], group_name="analysis", kinds={"duckdb", "parquet"})
def summary_tables(context: AssetExecutionContext, results: ResultsStoreResource) -> MaterializeResult:
    """Mean +- std and median of macro precision, recall and F1 per research question, written as
    Parquet in the store, and as CSV and markdown under data/tables."""
    store = results.store()
    tables = build_summary_tables(
        store.read_table(RUN_METRICS_TABLE), store.read_table(VOTE_METRICS_TABLE), store.read_table(FINETUNE_METRICS_TABLE)
    )
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
        return line_figure(train_size_series(table), "train_examples", "series", title, path, log_x=True)
    return comparison_figure(table, title, path)


def train_size_series(table: pd.DataFrame) -> pd.DataFrame:
    """The learning-curve table with one series per (method, model), prefixed by the dataset when there are several."""
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
