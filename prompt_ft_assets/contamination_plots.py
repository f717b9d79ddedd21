"""Figure of the contamination table: per model, how often real and control second halves are
reproduced, their word overlap and log-probabilities, and the model's prompted macro F1."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .breakdown_plots import TITLE_WIDTH  # noqa: E402
from .contamination import REAL  # noqa: E402
from .plotting import BAR_COLORS, FLAGGED_HATCH, save_figure  # noqa: E402

FLAG_NOTE = "hatched: real second halves reproduced clearly more often than a control (bootstrap 95% interval above 0)"
PROMPTED_FLAG_NOTE = "hatched F1: includes flagged prompted runs (one class, near chance or >10% invalid)"


def _conditions(table: pd.DataFrame, score: str) -> tuple[list[str], list[str], dict[str, list[float]]]:
    """Return the model labels, the conditions (real first, then each control) and each condition's values of score."""
    labels = list(dict.fromkeys(table["dataset"] + " / " + table["model"]))
    controls = sorted(table["control"].unique())
    values: dict[str, list[float]] = {REAL: [], **{control: [] for control in controls}}
    keyed = table.assign(_label=table["dataset"] + " / " + table["model"])
    for label in labels:
        rows = keyed[keyed["_label"] == label].set_index("control")
        values[REAL].append(float(rows[f"real_{score}"].iloc[0]))
        for control in controls:
            values[control].append(float(rows.loc[control, f"control_{score}"]) if control in rows.index else np.nan)
    return labels, [REAL, *controls], values


def _grouped_bars(
    axis, labels: list[str], conditions: list[str], values: dict[str, list[float]], flagged: list[bool], value_format: str
) -> None:
    """Draw one bar per condition for each model, labeled with its value, and hatch the real bars of flagged models."""
    height = 0.8 / len(conditions)
    for c, condition in enumerate(conditions):
        positions = [i + (c - (len(conditions) - 1) / 2) * height for i in range(len(labels))]
        bars = axis.barh(positions, values[condition], height=height * 0.95, color=BAR_COLORS[c % len(BAR_COLORS)],
                         alpha=0.9)
        for bar, position, value in zip(bars, positions, values[condition]):
            if not np.isnan(value):
                axis.text(value, position, f" {value:{value_format}}", va="center", fontsize=6)
        if condition == REAL:
            for bar, is_flagged in zip(bars, flagged):
                if is_flagged:
                    bar.set_hatch(FLAGGED_HATCH)
                    bar.set_edgecolor("#333333")
    axis.set_yticks(range(len(labels)), labels, fontsize=8)


def _legend(axis, conditions: list[str]) -> None:
    # Plain swatches, so a hatched (flagged) first bar does not make the real swatch look flagged.
    handles = [Patch(color=BAR_COLORS[c % len(BAR_COLORS)], label=condition) for c, condition in enumerate(conditions)]
    axis.legend(handles=handles, fontsize=7, loc="lower right")


def contamination_figure(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Draw four panels with one row per (dataset, model): the exact-match rate and LCS ratio of real and
    control second halves, the mean log-probability per target token, and the prompted macro F1 (mean +- std
    over runs)."""
    if table.empty:
        figure, axis = plt.subplots(figsize=(7, 2.5))
        axis.text(0.5, 0.5, "no contamination probe results yet", ha="center", va="center")
        axis.set_axis_off()
        axis.set_title(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
        return save_figure(figure, path)

    labels, conditions, exact = _conditions(table, "exact_match")
    _, _, overlap = _conditions(table, "lcs_ratio")
    _, _, logprob = _conditions(table, "logprob_per_token")
    by_model = table.assign(_label=table["dataset"] + " / " + table["model"]).groupby("_label", sort=False)
    flagged = [bool(by_model.get_group(label)["flag_reproduced"].any()) for label in labels]
    first = by_model.first().loc[labels]

    figure, axes = plt.subplots(1, 4, figsize=(16, max(2.8, 0.9 * len(labels) + 1.6)), sharey=True)
    _grouped_bars(axes[0], labels, conditions, exact, flagged, ".2f")
    _legend(axes[0], conditions)
    # The panels share the y axis, so inverting it once puts the first model on top in all of them.
    axes[0].invert_yaxis()
    axes[0].set_xlim(0, max(0.05, np.nanmax([v for vs in exact.values() for v in vs]) * 1.3))
    axes[0].set_xlabel("exact-match rate of the second half")
    _grouped_bars(axes[1], labels, conditions, overlap, flagged, ".2f")
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("LCS ratio of words (second half)")
    _grouped_bars(axes[2], labels, conditions, logprob, flagged, ".2f")
    axes[2].set_xlabel("mean log-probability per target token")

    f1 = first["prompted_macro_f1"].astype(float).to_numpy()
    std = first["prompted_macro_f1_std"].astype(float).fillna(0.0).to_numpy()
    prompted_flagged = first["prompted_flagged_runs"].fillna(0).astype(int).to_numpy() > 0
    bars = axes[3].barh(range(len(labels)), np.nan_to_num(f1), xerr=np.where(np.isnan(f1), 0.0, std),
                        color="#4c72b0", alpha=0.85, capsize=3)
    for bar, is_flagged in zip(bars, prompted_flagged):
        if is_flagged:
            bar.set_hatch(FLAGGED_HATCH)
            bar.set_edgecolor("#c44e52")
    for i, (value, runs) in enumerate(zip(f1, first["prompted_runs"])):
        count = f"{int(runs)} run" if int(runs) == 1 else f"{int(runs)} runs"
        text = f"{value:.3f} ({count})" if not np.isnan(value) else "no prompted runs yet"
        axes[3].text(0.02, i, text, va="center", fontsize=7, color="#222222")
    axes[3].set_xlim(0, 1)
    axes[3].set_xlabel("prompted macro F1 (mean +- std over runs)")
    figure.suptitle(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
    notes = [note for note, shown in ((FLAG_NOTE, any(flagged)), (PROMPTED_FLAG_NOTE, prompted_flagged.any())) if shown]
    return save_figure(figure, path, "; ".join(notes) or None)
