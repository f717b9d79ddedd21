"""Partitions of the study, derived from the experiment spec and registered in the Dagster instance.

Datasets, prompted runs and finetune runs are dynamic partitions, so adding a dataset, a model,
a template, a run or a seed to the spec adds partitions without changing code. A prompted
partition is a (dataset, prompt_run) pair with prompt_run = "<model>__<template>__r<run>"; a
finetune partition is (dataset, finetune_run) with finetune_run = "<encoder>__s<seed>".
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

PROMPTED_PARTITIONS = MultiPartitionsDefinition({"dataset": DATASET_PARTITIONS, "prompt_run": PROMPT_RUN_PARTITIONS})
FINETUNE_PARTITIONS = MultiPartitionsDefinition({"dataset": DATASET_PARTITIONS, "finetune_run": FINETUNE_RUN_PARTITIONS})

_RUN_SUFFIX = re.compile(r"^r(\d+)$")
_SEED_SUFFIX = re.compile(r"^s(-?\d+)$")


class PartitionKeyError(ValueError):
    """A partition key that does not follow the study's key format."""


@dataclass(frozen=True)
class PromptRun:
    model: str
    template: str
    run: int

    @property
    def key(self) -> str:
        return PARTITION_SEPARATOR.join((self.model, self.template, f"r{self.run}"))


@dataclass(frozen=True)
class FinetuneRun:
    encoder: str
    seed: int

    @property
    def key(self) -> str:
        return PARTITION_SEPARATOR.join((self.encoder, f"s{self.seed}"))


def parse_prompt_run(key: str) -> PromptRun:
    parts = key.split(PARTITION_SEPARATOR)
    match = _RUN_SUFFIX.match(parts[-1]) if len(parts) == 3 else None
    if match is None:
        raise PartitionKeyError(f"prompt_run key {key!r} is invalid; expected '<model>__<template>__r<run>'")
    return PromptRun(parts[0], parts[1], int(match.group(1)))


def parse_finetune_run(key: str) -> FinetuneRun:
    parts = key.split(PARTITION_SEPARATOR)
    match = _SEED_SUFFIX.match(parts[-1]) if len(parts) == 2 else None
    if match is None:
        raise PartitionKeyError(f"finetune_run key {key!r} is invalid; expected '<encoder>__s<seed>'")
    return FinetuneRun(parts[0], int(match.group(1)))


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
                for run in range(spec.prompting.runs):
                    run_key = PromptRun(model.name, template, run).key
                    keys.append(MultiPartitionKey({"dataset": dataset.id, "prompt_run": run_key}))
    return keys


def finetune_partition_keys(spec: ExperimentSpec) -> list[MultiPartitionKey]:
    keys = []
    for dataset in spec.datasets:
        for encoder in spec.encoders:
            for seed in spec.finetune.seeds:
                keys.append(MultiPartitionKey({"dataset": dataset.id, "finetune_run": FinetuneRun(encoder.name, seed).key}))
    return keys


def sync_partitions(instance: DagsterInstance, spec: ExperimentSpec) -> dict[str, list[str]]:
    """Register the spec's partitions in the instance; return the keys that were new, per dimension."""
    wanted = {
        DATASET_PARTITIONS.name: [dataset.id for dataset in spec.datasets],
        PROMPT_RUN_PARTITIONS.name: sorted({key.keys_by_dimension["prompt_run"] for key in prompted_partition_keys(spec)}),
        FINETUNE_RUN_PARTITIONS.name: sorted({key.keys_by_dimension["finetune_run"] for key in finetune_partition_keys(spec)}),
    }
    added: dict[str, list[str]] = {}
    for name, keys in wanted.items():
        existing = set(instance.get_dynamic_partitions(name))
        new = [key for key in keys if key not in existing]
        if new:
            instance.add_dynamic_partitions(name, new)
        added[name] = new
    return added
