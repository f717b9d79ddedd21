"""Figures drawn from the summary tables, one PNG per table.

Bars show the mean macro F1 with the standard deviation as an error bar. Groups with flagged runs
(one class, near chance or mostly invalid) are hatched, so weak runs are visible as such.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FLAGGED_HATCH = "//"
FIGURE_DPI = 110
FLAG_NOTE = "hatched: includes flagged runs (one class, near chance or >10% invalid)"


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
        if flagged.sum() > 0:
            axis.text(0.0, -0.08, FLAG_NOTE, transform=axis.transAxes, fontsize=7, va="top", color="#c44e52")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    return path


def line_figure(table: pd.DataFrame, x: str, series: str, title: str, path: Path, log_x: bool = False) -> Path:
    """Mean macro F1 +- std against x, one line per value of series."""
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
        if log_x:
            axis.set_xscale("log")
        axis.set_xlabel(x)
        axis.set_ylabel("macro F1 (mean +- std)")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=7)
        if "flagged_runs" in table and table["flagged_runs"].sum() > 0:
            axis.text(0.0, -0.15, "red x: includes flagged runs", transform=axis.transAxes, fontsize=7, color="#c44e52")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    return path


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
