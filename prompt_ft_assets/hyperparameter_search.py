"""Hyperparameter selection for finetuning: each grid point cross-validated on train rows only.

A grid point is one combination of the values in finetune.grid. Each point is trained on every
selection fold and scored on the fold it left out; the point with the best mean macro F1 wins,
and a tie goes to the point listed first. The evaluation split is never an input here.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from .finetune_splits import selection_folds, training_examples
from .metrics import classification_metrics
from .spec import DatasetSpec, FinetuneSettings

logger = logging.getLogger(__name__)

# fit_predict(fit rows, held-out rows, settings, seed) -> predicted class per held-out row.
FitPredict = Callable[[pd.DataFrame, pd.DataFrame, FinetuneSettings, int], np.ndarray]


def grid_points(grid: dict[str, list[int | float]] | None) -> list[dict[str, int | float]]:
    """Every combination of the grid's values, the first key varying slowest; one empty point without a grid."""
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def apply_point(settings: FinetuneSettings, point: dict[str, int | float]) -> FinetuneSettings:
    """The settings with the point's values, validated, and without a grid."""
    return FinetuneSettings.model_validate({**settings.model_dump(), **point, "grid": None})


def point_json(point: dict[str, int | float]) -> str:
    return json.dumps(point, sort_keys=True)


def cross_validate_grid(
    rows: pd.DataFrame,
    settings: FinetuneSettings,
    train_size: int | None,
    n_classes: int,
    fit_predict: FitPredict,
) -> pd.DataFrame:
    """One row per (grid point, fold): the point, fold sizes and the held-out fold's metrics.

    rows are the train rows the selection may use; folds, subsamples and training use
    settings.selection_seed.
    """
    seed = settings.selection_seed
    folds = list(selection_folds(rows, settings.selection_folds, train_size, seed))
    points = grid_points(settings.grid)
    records = []
    for index, point in enumerate(points):
        point_settings = apply_point(settings, point)
        for fold in folds:
            logger.info("grid point %d of %d %s, fold %d: %d fit rows", index + 1, len(points), point, fold.fold, len(fold.fit))
            predictions = np.asarray(fit_predict(fold.fit, fold.held_out, point_settings, seed + fold.fold))
            metrics = classification_metrics(fold.held_out["label"].to_numpy(), predictions, n_classes)
            records.append(
                {
                    "point": index,
                    "hyperparameters_json": point_json(point),
                    "fold": fold.fold,
                    "fit_examples": len(fold.fit),
                    "held_out_examples": len(fold.held_out),
                    **{f"fold_{name}": value for name, value in metrics.as_dict().items()},
                }
            )
    return pd.DataFrame(records)


def choose_point(scores: pd.DataFrame) -> pd.DataFrame:
    """Add each point's mean and std of fold macro F1 and mark the chosen point (best mean, then first listed)."""
    summary = scores.groupby("point")["fold_macro_f1"].agg(["mean", "std"]).fillna(0.0)
    best = summary["mean"].max()
    chosen_point = int(summary.index[summary["mean"] == best].min())
    scored = scores.copy()
    scored["mean_macro_f1"] = scored["point"].map(summary["mean"])
    scored["std_macro_f1"] = scored["point"].map(summary["std"])
    scored["chosen"] = scored["point"] == chosen_point
    return scored


def chosen_hyperparameters(selection: pd.DataFrame) -> dict[str, int | float]:
    """The chosen point's values from a stored selection table."""
    chosen = selection.loc[selection["chosen"], "hyperparameters_json"].unique()
    if len(chosen) != 1:
        raise ValueError(f"the selection table marks {len(chosen)} points as chosen; materialize finetune_selection again")
    return json.loads(chosen[0])


def select_hyperparameters(
    examples: pd.DataFrame,
    config: DatasetSpec,
    settings: FinetuneSettings,
    train_size: int | None,
    fit_predict: FitPredict,
) -> pd.DataFrame:
    """Cross-validate every grid point on the train pool (less the k_fold held-out fold) and mark the chosen one.

    examples may hold both splits; only train-split rows reach fit_predict and the scores.
    """
    rows = training_examples(examples, config, settings)
    return choose_point(cross_validate_grid(rows, settings, train_size, len(config.label_names), fit_predict))
