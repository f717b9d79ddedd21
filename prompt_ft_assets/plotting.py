"""Figures drawn from the summary tables, one PNG per table.

Bars show the mean macro F1 with the standard deviation as an error bar. Groups with flagged runs
(one class, near chance or mostly invalid) are hatched, so weak runs are visible as such.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FLAGGED_HATCH = "//"
# Colors of grouped bars and series, in order.
BAR_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
FIGURE_DPI = 110
FLAG_NOTE = "hatched: includes flagged runs (one class, near chance or >10% invalid)"


def save_figure(figure, path: Path, note: str | None = None) -> Path:
    """Lay out the figure with the note in a footer strip below the axes, write it to path through a
    temporary file (a reader never sees half a PNG) and close it."""
    if note:
        figure.text(0.01, 0.01, note, fontsize=7, va="bottom", ha="left", color="#c44e52")
        figure.tight_layout(rect=(0, 0.05, 1, 1))
    else:
        figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, dpi=FIGURE_DPI, format="png")
    plt.close(figure)
    os.replace(partial, path)
    return path


def _label(row: pd.Series, columns: list[str]) -> str:
    return " / ".join(str(row[column]) for column in columns)


def bar_figure(table: pd.DataFrame, label_columns: list[str], title: str, path: Path) -> Path:
    """Horizontal bars of mean macro F1 +- std, one per row of the table."""
    height = max(2.5, 0.35 * len(table) + 1.2)
    figure, axis = plt.subplots(figsize=(8, height))
    if table.empty:
        axis.text(0.5, 0.5, "no results yet", ha="center", va="center")
        axis.set_axis_off()
    else:
        labels = [_label(row, label_columns) for _, row in table.iterrows()]
        positions = range(len(table))
        bars = axis.barh(
            positions, table["macro_f1_mean"], xerr=table.get("macro_f1_std"), color="#4c72b0", capsize=3, alpha=0.85
        )
        flagged = table["flagged_runs"] if "flagged_runs" in table else pd.Series(0, index=table.index)
        for bar, count in zip(bars, flagged):
            if count and count > 0:
                bar.set_hatch(FLAGGED_HATCH)
                bar.set_edgecolor("#c44e52")
        axis.set_yticks(list(positions), labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.set_xlabel("macro F1 (mean +- std)")
    note = FLAG_NOTE if not table.empty and flagged.sum() > 0 else None
    axis.set_title(title, fontsize=10)
    return save_figure(figure, path, note)


def line_figure(
    table: pd.DataFrame, x: str, series: str, title: str, path: Path, log_x: bool = False, x_label: str | None = None
) -> Path:
    """Mean macro F1 +- std against x, one line per value of series.

    With log_x, an x of 0 (zero-shot prompting on the learning curve) switches the axis to a
    symmetric log scale, linear from 0 to 1 and logarithmic above, because a log axis has no 0.
    """
    figure, axis = plt.subplots(figsize=(7, 4))
    if table.empty:
        axis.text(0.5, 0.5, "no results yet", ha="center", va="center")
        axis.set_axis_off()
    else:
        for name, group in table.sort_values(x).groupby(series):
            axis.errorbar(group[x], group["macro_f1_mean"], yerr=group["macro_f1_std"], marker="o", capsize=3, label=str(name))
            flagged = group[group.get("flagged_runs", 0) > 0] if "flagged_runs" in group else group.iloc[0:0]
            if not flagged.empty:
                axis.scatter(flagged[x], flagged["macro_f1_mean"], marker="x", color="#c44e52", s=60, zorder=3)
        if log_x and (table[x] <= 0).any():
            axis.set_xscale("symlog", linthresh=1)
        elif log_x:
            axis.set_xscale("log")
        axis.set_xlabel(x_label or x)
        axis.set_ylabel("macro F1 (mean +- std)")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=7)
    flagged_any = not table.empty and "flagged_runs" in table and table["flagged_runs"].sum() > 0
    axis.set_title(title, fontsize=10)
    return save_figure(figure, path, "red x: includes flagged runs" if flagged_any else None)


def comparison_figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Each model's best template and mean over templates beside each encoder's mean F1."""
    rows = []
    if not table.empty:
        for (dataset, method, model), group in table.groupby(["dataset", "method", "model"]):
            first = group.iloc[0]
            flagged = first["prompted_flagged_runs"]
            rows.append({"label": f"{dataset} / {model} best ({first['best_template']})", "macro_f1_mean": first["best_template_f1_mean"], "macro_f1_std": first["best_template_f1_std"], "flagged_runs": flagged})
            rows.append({"label": f"{dataset} / {model} mean over templates", "macro_f1_mean": first["mean_over_templates_f1_mean"], "macro_f1_std": first["mean_over_templates_f1_std"], "flagged_runs": flagged})
        for (dataset, encoder), group in table.groupby(["dataset", "encoder"]):
            first = group.iloc[0]
            rows.append({"label": f"{dataset} / {encoder} finetuned", "macro_f1_mean": first["encoder_f1_mean"], "macro_f1_std": first["encoder_f1_std"], "flagged_runs": first["encoder_flagged_seeds"]})
    return bar_figure(pd.DataFrame(rows), ["label"], title, path)
