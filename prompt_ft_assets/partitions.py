"""Partitions of the study, derived from the experiment spec and registered in the Dagster instance.

Datasets, prompted runs and finetune runs are dynamic partitions, so adding a dataset, a model,
a template, a run or a seed to the spec adds partitions without changing code. A prompted
partition is a (dataset, prompt_run) pair with prompt_run = "<model>__<template>__r<run>", or
"<model>__<template>__score" for label scoring (prompting.methods); a
finetune partition is (dataset, finetune_run) with finetune_run = "<encoder>__n<train size>__s<seed>",
the train size being a number of examples or "all". A hyperparameter selection partition is
(dataset, finetune_selection) with finetune_selection = "<encoder>__n<train size>"; the spec gets
these only when it sets finetune.grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dagster import DagsterInstance, DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

from .spec import PARTITION_SEPARATOR, ExperimentSpec
from .templates import load_promptsource_templates, select_templates

DATASET_PARTITIONS = DynamicPartitionsDefinition(name="datasets")
PROMPT_RUN_PARTITIONS = DynamicPartitionsDefinition(name="prompt_runs")
FINETUNE_RUN_PARTITIONS = DynamicPartitionsDefinition(name="finetune_runs")
FINETUNE_SELECTION_KEYS = DynamicPartitionsDefinition(name="finetune_selections")

PROMPTED_PARTITIONS = MultiPartitionsDefinition({"dataset": DATASET_PARTITIONS, "prompt_run": PROMPT_RUN_PARTITIONS})
FINETUNE_PARTITIONS = MultiPartitionsDefinition({"dataset": DATASET_PARTITIONS, "finetune_run": FINETUNE_RUN_PARTITIONS})
FINETUNE_SELECTION_PARTITIONS = MultiPartitionsDefinition(
    {"dataset": DATASET_PARTITIONS, "finetune_selection": FINETUNE_SELECTION_KEYS}
)

_RUN_SUFFIX = re.compile(r"^r(\d+)$")
SCORE_METHOD = "score"
_SEED_SUFFIX = re.compile(r"^s(-?\d+)$")
_TRAIN_SIZE = re.compile(r"^n(all|[1-9]\d*)$")
ALL_TRAIN_EXAMPLES = "all"


class PartitionKeyError(ValueError):
    """A partition key that does not follow the study's key format."""


@dataclass(frozen=True)
class PromptRun:
    model: str
    template: str
    run: int
    # "generate" (sampled answers, one partition per run) or "score" (one deterministic partition, run 0).
    method: str = "generate"

    @property
    def key(self) -> str:
        if self.method == SCORE_METHOD:
            return PARTITION_SEPARATOR.join((self.model, self.template, SCORE_METHOD))
        return PARTITION_SEPARATOR.join((self.model, self.template, f"r{self.run}"))


def train_size_label(train_size: int | None) -> str:
    """'256' for 256 examples, 'all' for the whole train pool (None)."""
    return ALL_TRAIN_EXAMPLES if train_size is None else str(train_size)


def _parse_train_size(part: str) -> int | None | bool:
    """The train size of an 'n<size>' key part; False when the part is not one."""
    match = _TRAIN_SIZE.match(part)
    if match is None:
        return False
    return None if match.group(1) == ALL_TRAIN_EXAMPLES else int(match.group(1))


@dataclass(frozen=True)
class FinetuneRun:
    encoder: str
    seed: int
    train_size: int | None = None

    @property
    def key(self) -> str:
        return PARTITION_SEPARATOR.join((self.encoder, f"n{train_size_label(self.train_size)}", f"s{self.seed}"))

    @property
    def selection(self) -> "FinetuneSelection":
        return FinetuneSelection(self.encoder, self.train_size)


@dataclass(frozen=True)
class FinetuneSelection:
    encoder: str
    train_size: int | None = None

    @property
    def key(self) -> str:
        return PARTITION_SEPARATOR.join((self.encoder, f"n{train_size_label(self.train_size)}"))


def parse_prompt_run(key: str) -> PromptRun:
    parts = key.split(PARTITION_SEPARATOR)
    if len(parts) == 3 and parts[-1] == SCORE_METHOD:
        return PromptRun(parts[0], parts[1], 0, SCORE_METHOD)
    match = _RUN_SUFFIX.match(parts[-1]) if len(parts) == 3 else None
    if match is None:
        raise PartitionKeyError(
            f"prompt_run key {key!r} is invalid; expected '<model>__<template>__r<run>' or '<model>__<template>__score'"
        )
    return PromptRun(parts[0], parts[1], int(match.group(1)))


def parse_finetune_run(key: str) -> FinetuneRun:
    """Parse '<encoder>__n<size>__s<seed>'; the older '<encoder>__s<seed>' means all train examples."""
    parts = key.split(PARTITION_SEPARATOR)
    match = _SEED_SUFFIX.match(parts[-1]) if len(parts) in (2, 3) else None
    train_size = _parse_train_size(parts[1]) if len(parts) == 3 else None
    if match is None or train_size is False:
        raise PartitionKeyError(
            f"finetune_run key {key!r} is invalid; expected '<encoder>__n<train size or all>__s<seed>', "
            "for example 'minilm-l6__n256__s0'"
        )
    return FinetuneRun(parts[0], int(match.group(1)), train_size)


def parse_finetune_selection(key: str) -> FinetuneSelection:
    parts = key.split(PARTITION_SEPARATOR)
    train_size = _parse_train_size(parts[1]) if len(parts) == 2 else False
    if train_size is False:
        raise PartitionKeyError(
            f"finetune_selection key {key!r} is invalid; expected '<encoder>__n<train size or all>', for example 'minilm-l6__nall'"
        )
    return FinetuneSelection(parts[0], train_size)


def template_slugs(spec: ExperimentSpec, dataset_id: str) -> list[str]:
    dataset = spec.dataset(dataset_id)
    templates = load_promptsource_templates(dataset.promptsource.dataset, dataset.promptsource.subset)
    return [template.slug for template in select_templates(templates, dataset.templates)]


def prompted_partition_keys(spec: ExperimentSpec) -> list[MultiPartitionKey]:
    """Every (dataset, prompt_run) pair the spec asks for."""
    keys = []
    for dataset in spec.datasets:
        for template in template_slugs(spec, dataset.id):
            for model in spec.prompt_models:
                if "generate" in spec.prompting.methods:
                    for run in range(spec.prompting.runs):
                        run_key = PromptRun(model.name, template, run).key
                        keys.append(MultiPartitionKey({"dataset": dataset.id, "prompt_run": run_key}))
                if SCORE_METHOD in spec.prompting.methods:
                    run_key = PromptRun(model.name, template, 0, SCORE_METHOD).key
                    keys.append(MultiPartitionKey({"dataset": dataset.id, "prompt_run": run_key}))
    return keys


def finetune_partition_keys(spec: ExperimentSpec) -> list[MultiPartitionKey]:
    keys = []
    for dataset in spec.datasets:
        for encoder in spec.encoders:
            for train_size in spec.finetune.train_sizes:
                for seed in spec.finetune.seeds:
                    run_key = FinetuneRun(encoder.name, seed, train_size).key
                    keys.append(MultiPartitionKey({"dataset": dataset.id, "finetune_run": run_key}))
    return keys


def finetune_selection_partition_keys(spec: ExperimentSpec) -> list[MultiPartitionKey]:
    """Every (dataset, encoder and train size) whose hyperparameters are chosen on a grid; none without finetune.grid."""
    if not spec.finetune.grid:
        return []
    keys = []
    for dataset in spec.datasets:
        for encoder in spec.encoders:
            for train_size in spec.finetune.train_sizes:
                selection_key = FinetuneSelection(encoder.name, train_size).key
                keys.append(MultiPartitionKey({"dataset": dataset.id, "finetune_selection": selection_key}))
    return keys


def wanted_partitions(spec: ExperimentSpec) -> dict[str, list[str]]:
    """The keys of each dynamic partitions definition that the spec asks for."""
    return {
        DATASET_PARTITIONS.name: [dataset.id for dataset in spec.datasets],
        PROMPT_RUN_PARTITIONS.name: sorted({key.keys_by_dimension["prompt_run"] for key in prompted_partition_keys(spec)}),
        FINETUNE_RUN_PARTITIONS.name: sorted({key.keys_by_dimension["finetune_run"] for key in finetune_partition_keys(spec)}),
        FINETUNE_SELECTION_KEYS.name: sorted(
            {key.keys_by_dimension["finetune_selection"] for key in finetune_selection_partition_keys(spec)}
        ),
    }


def sync_partitions(instance: DagsterInstance, spec: ExperimentSpec) -> dict[str, list[str]]:
    """Register the spec's partitions in the instance; return the keys that were new, per dimension."""
    added: dict[str, list[str]] = {}
    for name, keys in wanted_partitions(spec).items():
        existing = set(instance.get_dynamic_partitions(name))
        new = [key for key in keys if key not in existing]
        if new:
            instance.add_dynamic_partitions(name, new)
        added[name] = new
    return added
