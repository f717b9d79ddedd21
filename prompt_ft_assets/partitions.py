"""Partitions of the study, derived from the experiment spec and registered in the Dagster instance.

Datasets, prompted runs and finetune runs are dynamic partitions, so adding a dataset, a model,
a template, a run or a seed to the spec adds partitions without changing code. A prompted
partition is a (dataset, prompt_run) pair with prompt_run = "<model>__<template>__r<run>", or
"<model>__<template>__score" for label scoring (prompting.methods). A k-shot run (prompting.shots,
k > 0) puts "k<k>" before the last part: "<model>__<template>__k<k>__r<run>" or
"<model>__<template>__k<k>__score"; zero-shot keys have no k part, so keys stored before k-shot
prompting existed keep their meaning. A generate run at a temperature other than the model's
default adds "t<temperature>" (prompting.temperatures) and one in another answer format than
rationale_label adds "f<format>" (prompting.answer_formats), in the order k, t, f before the last
part: "smollm2-135m__editing__k4__t0.7__flabel__r0". A
finetune partition is (dataset, finetune_run) with finetune_run = "<encoder>__n<train size>__s<seed>",
the train size being a number of examples or "all". A hyperparameter selection partition is
(dataset, finetune_selection) with finetune_selection = "<encoder>__n<train size>"; the spec gets
these only when it sets finetune.grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dagster import DagsterInstance, DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

from .answer_formats import DEFAULT_ANSWER_FORMAT, AnswerFormatError, parse_answer_format
from .spec import MAX_TEMPERATURE, PARTITION_SEPARATOR, ExperimentSpec
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
_SHOTS_PART = re.compile(r"^k([1-9]\d*)$")
_TEMPERATURE_PART = re.compile(r"^t(\d+(?:\.\d+)?)$")
# Optional key parts between the template and the last part, in the only order they may appear.
_OPTIONAL_PARTS = ("k", "t", "f")
PROMPT_RUN_EXAMPLE = "smollm2-135m__editing__k4__t0.7__flabel__r0"
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
    # Labeled train examples shown before each evaluation example; 0 for zero-shot.
    shots: int = 0
    # Sampling temperature of a generate run. None is the model's default (its spec `temperature`).
    temperature: float | None = None
    # Answer format of a generate run (answer_formats.py).
    answer_format: str = DEFAULT_ANSWER_FORMAT

    @property
    def key(self) -> str:
        last = SCORE_METHOD if self.method == SCORE_METHOD else f"r{self.run}"
        shots = (f"k{self.shots}",) if self.shots else ()
        temperature = (f"t{temperature_label(self.temperature)}",) if self.temperature is not None else ()
        answer_format = (f"f{self.answer_format}",) if self.answer_format != DEFAULT_ANSWER_FORMAT else ()
        return PARTITION_SEPARATOR.join((self.model, self.template, *shots, *temperature, *answer_format, last))


def temperature_label(temperature: float) -> str:
    """Format a temperature of at most two decimals as its shortest decimal: 0.7 -> '0.7', 1.0 -> '1', 0.05 -> '0.05'."""
    return f"{temperature:.2f}".rstrip("0").rstrip(".")


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


def _invalid_prompt_run(key: str, reason: str) -> PartitionKeyError:
    return PartitionKeyError(
        f"prompt_run key {key!r} is invalid: {reason}; expected "
        "'<model>__<template>[__k<shots>][__t<temperature>][__f<answer format>]__r<run>' or "
        f"'<model>__<template>[__k<shots>]__score', for example {PROMPT_RUN_EXAMPLE!r}"
    )


def _parse_optional_part(key: str, part: str) -> tuple[str, object]:
    """Return the kind ('k', 't' or 'f') and value of one optional key part, or raise PartitionKeyError."""
    if part == "k0":
        raise _invalid_prompt_run(key, "zero-shot keys have no k part; drop '__k0'")
    shots = _SHOTS_PART.match(part)
    if shots is not None:
        return "k", int(shots.group(1))
    temperature = _TEMPERATURE_PART.match(part)
    if temperature is not None:
        value = float(temperature.group(1))
        if value > MAX_TEMPERATURE:
            raise _invalid_prompt_run(key, f"temperature {temperature.group(1)} is above {MAX_TEMPERATURE:g}")
        if temperature_label(value) != temperature.group(1):
            raise _invalid_prompt_run(key, f"write the temperature as 't{temperature_label(value)}', not {part!r}")
        return "t", value
    if part.startswith("f"):
        if part[1:] == DEFAULT_ANSWER_FORMAT:
            raise _invalid_prompt_run(key, f"the default answer format has no f part; drop '__{part}'")
        try:
            return "f", parse_answer_format(part[1:]).name
        except AnswerFormatError as error:
            raise _invalid_prompt_run(key, str(error)) from None
    raise _invalid_prompt_run(key, f"part {part!r} is not '__k<shots>', '__t<temperature>' or '__f<answer format>'")


def parse_prompt_run(key: str) -> PromptRun:
    """Parse '<model>__<template>[__k<shots>][__t<temperature>][__f<format>]__r<run>' or
    '<model>__<template>[__k<shots>]__score'."""
    parts = key.split(PARTITION_SEPARATOR)
    if len(parts) < 3 or not all(parts):
        raise _invalid_prompt_run(key, "it needs a model, a template and a last part, joined by '__'")
    run_match = _RUN_SUFFIX.match(parts[-1])
    if run_match is None and parts[-1] != SCORE_METHOD:
        raise _invalid_prompt_run(key, f"the last part {parts[-1]!r} is neither 'r<run>' nor 'score'")
    values: dict[str, object] = {}
    for part in parts[2:-1]:
        kind, value = _parse_optional_part(key, part)
        position = _OPTIONAL_PARTS.index(kind)
        if any(_OPTIONAL_PARTS.index(seen) >= position for seen in values):
            raise _invalid_prompt_run(key, f"part {part!r} is repeated or out of order; the order is k, t, f")
        values[kind] = value
    shots = int(values.get("k", 0))
    if run_match is None:
        if "t" in values or "f" in values:
            raise _invalid_prompt_run(key, "label scoring samples nothing and writes no answer, so a score key has no t or f part")
        return PromptRun(parts[0], parts[1], 0, SCORE_METHOD, shots)
    return PromptRun(parts[0], parts[1], int(run_match.group(1)), shots=shots, temperature=values.get("t"),
                     answer_format=str(values.get("f", DEFAULT_ANSWER_FORMAT)))


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


def run_temperatures(spec: ExperimentSpec, model_temperature: float) -> list[float | None]:
    """List the temperatures of a model's generate runs: None (its default) first, then each value of
    prompting.temperatures that differs from the default."""
    swept = [value for value in spec.prompting.temperatures or [] if value != model_temperature]
    return [None, *swept]


def prompted_partition_keys(spec: ExperimentSpec) -> list[MultiPartitionKey]:
    """List every (dataset, prompt_run) pair of the spec: each template, model, number of shots, method,
    temperature, answer format and run. Temperatures and answer formats apply to generate runs only."""
    keys = []
    for dataset in spec.datasets:
        for template in template_slugs(spec, dataset.id):
            for model in spec.prompt_models:
                for shots in spec.prompting.shots:
                    runs = []
                    if "generate" in spec.prompting.methods:
                        runs += [
                            PromptRun(model.name, template, run, shots=shots, temperature=temperature, answer_format=answer_format)
                            for temperature in run_temperatures(spec, model.temperature)
                            for answer_format in spec.prompting.answer_formats
                            for run in range(spec.prompting.runs)
                        ]
                    if SCORE_METHOD in spec.prompting.methods:
                        runs.append(PromptRun(model.name, template, 0, SCORE_METHOD, shots))
                    keys += [MultiPartitionKey({"dataset": dataset.id, "prompt_run": run.key}) for run in runs]
    return keys


def calibration_partition_keys(spec: ExperimentSpec) -> list[MultiPartitionKey]:
    """List the label-scoring partitions that get calibrated; none when prompting.calibration is null."""
    if spec.prompting.calibration is None:
        return []
    return [key for key in prompted_partition_keys(spec)
            if parse_prompt_run(key.keys_by_dimension["prompt_run"]).method == SCORE_METHOD]


def domain_dataset_ids(spec: ExperimentSpec) -> list[str]:
    """List the datasets whose spec names a domain field, so their metrics are broken down by domain."""
    return [dataset.id for dataset in spec.datasets if dataset.domain is not None]


def contamination_dataset_ids(spec: ExperimentSpec) -> list[str]:
    """List the datasets whose prompt models get the contamination probe: all of them when the spec has a
    contamination section, none otherwise."""
    if spec.contamination is None or not spec.prompt_models:
        return []
    return [dataset.id for dataset in spec.datasets]


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
