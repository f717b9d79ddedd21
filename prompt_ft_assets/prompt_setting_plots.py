"""Figures of the temperature and answer-format tables.

As in plotting.py, groups with flagged runs are marked: a red x on the temperature lines, hatched
bars for the answer formats.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .answer_formats import DEFAULT_ANSWER_FORMAT, LABEL_FIRST, LABEL_ONLY  # noqa: E402
from .plotting import BAR_COLORS, FLAG_NOTE, FLAGGED_HATCH, save_figure  # noqa: E402

TITLE_WIDTH = 90
# Panels of the answer-format figure: the table column and its axis label.
FORMAT_PANELS = (
    ("macro_f1_mean", "macro F1 (mean +- run std)"),
    ("invalid_rate", "invalid-answer rate"),
    ("completion_tokens_per_1000", "completion tokens per 1,000 classifications"),
    ("seconds_per_1000", "busy seconds per 1,000 classifications"),
)
_BOUNDED_BOUND = re.compile(r"^rationale(\d+)_label$")


def _empty(title: str, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 2.5))
    axis.text(0.5, 0.5, "no results yet", ha="center", va="center")
    axis.set_axis_off()
    axis.set_title(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
    return save_figure(figure, path)


def _series(table: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Label each row by the columns that vary across the table, for example 'smollm2-135m / editing'."""
    varying = [column for column in columns if table[column].nunique(dropna=False) > 1] or columns[1:2]
    return table[varying].astype(str).agg(" / ".join, axis=1)


def temperature_figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Draw mean macro F1 +- run std against temperature (left) and the run-to-run std itself (right).

    Each (dataset, model, template, answer format) gets one line, and a ring marks each model's
    default temperature.
    """
    if table.empty:
        return _empty(title, path)
    frame = table.assign(series=_series(table, ["dataset", "model", "template", "answer_format"]))
    figure, (f1_axis, std_axis) = plt.subplots(1, 2, figsize=(10, 4))
    flagged_any = False

    for index, (name, group) in enumerate(frame.sort_values("temperature").groupby("series", sort=True)):
        color = BAR_COLORS[index % len(BAR_COLORS)]
        f1_axis.errorbar(group["temperature"], group["macro_f1_mean"], yerr=group["macro_f1_std"], marker="o",
                         capsize=3, color=color, label=str(name))
        std_axis.plot(group["temperature"], group["macro_f1_std"], marker="o", color=color, label=str(name))

        default = group[group["model_default"].astype(bool)]
        f1_axis.scatter(default["temperature"], default["macro_f1_mean"], s=160, facecolors="none", edgecolors=color,
                        linewidths=1.5, zorder=3)
        flagged = group[group["flagged_runs"] > 0] if "flagged_runs" in group else group.iloc[0:0]
        if not flagged.empty:
            flagged_any = True
            f1_axis.scatter(flagged["temperature"], flagged["macro_f1_mean"], marker="x", color="#c44e52", s=60, zorder=4)

    f1_axis.set_xlabel("temperature")
    f1_axis.set_ylabel("macro F1 (mean +- run std)")
    f1_axis.set_ylim(0, 1)
    f1_axis.legend(fontsize=7)
    std_axis.set_xlabel("temperature")
    std_axis.set_ylabel("run-to-run std of macro F1")
    std_axis.set_ylim(bottom=0)
    figure.suptitle(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
    note = "ring: the model's default temperature"
    if flagged_any:
        note += "; red x: includes flagged runs (one class, near chance or >10% invalid)"
    return save_figure(figure, path, note)


def format_order(name: str) -> tuple[int, int]:
    """Sort key of answer formats: label only, label first, rationale first, then bounded rationales by bound."""
    fixed = {LABEL_ONLY: 0, LABEL_FIRST: 1, DEFAULT_ANSWER_FORMAT: 2}
    if name in fixed:
        return fixed[name], 0
    bounded = _BOUNDED_BOUND.match(name)
    return (3, int(bounded.group(1))) if bounded else (4, 0)


def answer_format_figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Draw four panels of bars per answer format: macro F1, invalid rate, and completion tokens and busy
    seconds per 1,000 classifications. Each (dataset, model, template, temperature) gets one bar color."""
    if table.empty:
        return _empty(title, path)
    frame = table.assign(series=_series(table, ["dataset", "model", "template", "temperature"]))
    formats = sorted(frame["answer_format"].unique(), key=format_order)
    series = sorted(frame["series"].unique())
    width = 0.8 / len(series)
    figure, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    flagged_any = False

    for axis, (column, label) in zip(axes.flat, FORMAT_PANELS):
        for index, name in enumerate(series):
            rows = frame[frame["series"] == name].set_index("answer_format").reindex(formats)
            positions = np.arange(len(formats)) + (index - (len(series) - 1) / 2) * width
            errors = rows["macro_f1_std"].fillna(0) if column == "macro_f1_mean" else None
            bars = axis.bar(positions, rows[column].fillna(0), width, yerr=errors, capsize=3,
                            color=BAR_COLORS[index % len(BAR_COLORS)], label=str(name))
            if column == "invalid_rate":
                # Grammar-constrained answers are often all valid, and a bar of height 0 would not show.
                axis.bar_label(bars, fmt="%.2f", fontsize=7)
            for bar, count in zip(bars, rows["flagged_runs"].fillna(0) if "flagged_runs" in rows else []):
                if count > 0 and column == "macro_f1_mean":
                    flagged_any = True
                    bar.set_hatch(FLAGGED_HATCH)
                    bar.set_edgecolor("#c44e52")
        axis.set_xticks(np.arange(len(formats)), formats, fontsize=8, rotation=15)
        axis.set_ylabel(label, fontsize=8)
        if column in ("macro_f1_mean", "invalid_rate"):
            axis.set_ylim(0, 1)

    axes.flat[0].legend(fontsize=7)
    figure.suptitle(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
    return save_figure(figure, path, FLAG_NOTE if flagged_any else None)
