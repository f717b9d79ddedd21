"""Figures of the breakdown tables: grouped bars (raw versus calibrated F1, F1 per domain) and
dataset statistics against the best F1 per dataset.

As in plotting.py, bars of groups with flagged runs are hatched.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plotting import BAR_COLORS, FLAG_NOTE, FLAGGED_HATCH, save_figure  # noqa: E402

# Characters per title line; longer questions wrap instead of running off the figure.
TITLE_WIDTH = 70
# Dataset statistics drawn against F1, with their axis labels; train_examples is drawn on a log axis.
STATISTIC_AXES = (
    ("train_examples", "train examples"),
    ("train_minority_class_share", "minority class share (train)"),
    ("train_mean_tokens", "mean whitespace tokens (train)"),
    ("train_class_vocabulary_jaccard", "class vocabulary Jaccard (train)"),
)
# The best-F1 columns of the statistics table, with their legend labels and markers.
RESULT_SERIES = (
    ("best_finetune_f1", "best finetune", "o"),
    ("best_prompted_f1", "best prompted", "s"),
    ("best_calibrated_f1", "best calibrated score", "^"),
)


def _save(figure, path: Path) -> Path:
    return save_figure(figure, path)


def _empty(title: str, path: Path, text: str = "no results yet") -> Path:
    figure, axis = plt.subplots(figsize=(7, 2.5))
    axis.text(0.5, 0.5, text, ha="center", va="center")
    axis.set_axis_off()
    axis.set_title(title, fontsize=10)
    return _save(figure, path)


def grouped_bar_figure(
    table: pd.DataFrame, label_columns: list[str], group_column: str, group_order: list[str], title: str, path: Path
) -> Path:
    """Horizontal bars of mean macro F1 +- std: one row per label, one bar per value of group_column.

    group_order fixes the order and colors of the groups; values not in it follow, sorted.
    """
    if table.empty:
        return _empty(title, path)
    groups = [g for g in group_order if g in set(table[group_column])]
    groups += sorted(set(table[group_column]) - set(groups))
    labels = list(dict.fromkeys(" / ".join(str(row[c]) for c in label_columns) for _, row in table.iterrows()))
    keyed = table.assign(_label=[" / ".join(str(row[c]) for c in label_columns) for _, row in table.iterrows()])
    height = 0.8 / len(groups)
    figure, axis = plt.subplots(figsize=(10, max(2.5, 0.3 * len(labels) * max(1.5, len(groups) * 0.6) + 1.4)))
    any_flagged = False
    for g, group in enumerate(groups):
        rows = keyed[keyed[group_column] == group].set_index("_label")
        positions, means, errors, flagged = [], [], [], []
        for i, label in enumerate(labels):
            if label not in rows.index:
                continue
            row = rows.loc[label]
            positions.append(i + (g - (len(groups) - 1) / 2) * height)
            means.append(float(row["macro_f1_mean"]))
            errors.append(float(row.get("macro_f1_std", 0.0)))
            flagged.append(bool(row.get("flagged_runs", 0)))
        bars = axis.barh(positions, means, height=height * 0.95, xerr=errors, capsize=2, label=str(group),
                         color=BAR_COLORS[g % len(BAR_COLORS)], alpha=0.9)
        for bar, is_flagged in zip(bars, flagged):
            if is_flagged:
                bar.set_hatch(FLAGGED_HATCH)
                bar.set_edgecolor("#333333")
                any_flagged = True
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("macro F1 (mean +- std)")
    axis.legend(fontsize=7, loc="lower right", title=group_column, title_fontsize=7)
    axis.set_title(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
    return save_figure(figure, path, FLAG_NOTE if any_flagged else None)


def statistics_figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Four panels, one per dataset statistic, each with the best finetune, prompted and calibrated
    macro F1 of every dataset against it, labeled with the dataset id."""
    if table.empty:
        return _empty(title, path)
    figure, axes = plt.subplots(2, 2, figsize=(9, 7), sharey=True)
    results = [(column, label, marker) for column, label, marker in RESULT_SERIES if column in table]
    has_results = any(table[column].notna().any() for column, _, _ in results)
    any_flagged = False

    for axis, (column, label) in zip(axes.flat, STATISTIC_AXES):
        x = table[column].astype(float)
        for series, (result, result_label, marker) in enumerate(results):
            y = table[result].astype(float)
            shown = x.notna() & y.notna()
            axis.scatter(x[shown], y[shown], marker=marker, s=45, label=result_label, color=BAR_COLORS[series])
            flag_column = result.removesuffix("_f1") + "_flagged"
            if flag_column in table:
                flagged = shown & table[flag_column].astype(bool)
                axis.scatter(x[flagged], y[flagged], marker="x", s=70, color="#c44e52", zorder=3)
                any_flagged = any_flagged or bool(flagged.any())

        for _, row in table.iterrows():
            values = [row[result] for result, _, _ in results if pd.notna(row[result])]
            y_text = float(np.mean(values)) if values else 0.05
            axis.annotate(str(row["dataset"]), (float(row[column]), y_text), fontsize=7, xytext=(4, 4),
                          textcoords="offset points")

        # Limits come from the statistics, so a panel without F1 points still places every dataset.
        low, high = float(x.min()), float(x.max())
        if column == "train_examples":
            axis.set_xscale("log")
            axis.set_xlim(low / 1.5, high * 1.5)
        else:
            pad = (high - low) * 0.15 or max(abs(high) * 0.15, 0.05)
            axis.set_xlim(low - pad, high + pad)
        axis.set_xlabel(label, fontsize=8)
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)

    for axis in axes[:, 0]:
        axis.set_ylabel("best macro F1")
    if has_results:
        axes[0, 0].legend(fontsize=7)
    else:
        axes[0, 0].text(0.02, 0.9, "no F1 results yet: dataset positions only", transform=axes[0, 0].transAxes, fontsize=7)
    if any_flagged:
        figure.text(0.01, 0.01, "red x: the best configuration includes flagged runs (one class, near chance or "
                    ">10% invalid)", fontsize=7, va="bottom", color="#c44e52")
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)
