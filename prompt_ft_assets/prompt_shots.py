"""The labeled train examples a k-shot prompted run shows, and the columns that record them.

Run r of a k-shot partition shows exactly the train set of the finetune run on k examples with
seed finetune.seeds[r % len(finetune.seeds)]. Both are drawn by finetune_splits from the same train
pool (the train sample less the k_fold held-out fold) with the same stratified subsample, so k-shot
prompting and finetuning on k examples see the same examples, pair by pair. A label-scoring
partition has run 0 and so uses finetune.seeds[0]. Shots come from the train split only, in
index order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .finetune_splits import training_examples
from .prompting import Shot
from .spec import DatasetSpec, FinetuneSettings
from .templates import PromptTemplate, render


# eq=False: the generated __eq__ would compare DataFrames, which has no single truth value.
@dataclass(frozen=True, eq=False)
class ShotDraw:
    """The k train rows one prompted run shows, with the finetune seed they were drawn with."""

    k: int
    seed: int
    rows: pd.DataFrame

    @property
    def idx(self) -> list[int]:
        """Train-split idx of the shots, in the order they are shown."""
        return [int(idx) for idx in self.rows["idx"]]

    def columns(self) -> dict[str, object]:
        """Return the columns stored with every prediction and metrics row: shots, shot_idx (JSON list), shot_seed."""
        return {"shots": self.k, "shot_idx": json.dumps(self.idx), "shot_seed": self.seed}


def shot_seed(finetune_seeds: Sequence[int], run: int) -> int:
    """Return the finetune seed whose k-example train set run `run` shows: seeds[run % len(seeds)]."""
    if not finetune_seeds:
        raise ValueError("finetune.seeds is empty; k-shot prompting draws its shots with a finetune seed, so list one")
    return int(finetune_seeds[run % len(finetune_seeds)])


def draw_shots(
    examples: pd.DataFrame, config: DatasetSpec, settings: FinetuneSettings, k: int, run: int
) -> ShotDraw:
    """Draw the k shots of run `run` from the train split; no rows for k = 0.

    examples is the dataset asset's table (both splits). Raises TrainSizeError when k exceeds the
    train examples available.
    """
    seed = shot_seed(settings.seeds, run)
    if k == 0:
        return ShotDraw(0, seed, examples.iloc[0:0])
    return ShotDraw(k, seed, training_examples(examples, config, settings, k, seed))


def render_shots(template: PromptTemplate, rows: pd.DataFrame, text_fields: list[str], seed: int) -> list[Shot]:
    """Render each shot row with the run's template and pair it with its gold answer choice."""
    shots = []
    for _, row in rows.iterrows():
        fields: dict[str, object] = {field: row[field] for field in text_fields}
        fields["label"] = int(row["label"])
        rendered = render(template, fields, seed=seed)
        shots.append(Shot(rendered.prompt, rendered.answer_choices[int(row["label"])]))
    return shots


def stored_shot_columns(predictions: pd.DataFrame) -> dict[str, object]:
    """Read the shot columns of a partition's stored predictions. Rows stored before k-shot prompting
    existed get zero-shot values."""
    if "shots" not in predictions:
        return {"shots": 0, "shot_idx": "[]", "shot_seed": None}
    first = predictions.iloc[0]
    return {"shots": int(first["shots"]), "shot_idx": str(first["shot_idx"]), "shot_seed": int(first["shot_seed"])}
