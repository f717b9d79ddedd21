"""Runs of one zero-shot generate setting share their prompts: the first partition materialized
answers every run, and the others read their answers from the cache. Real CoLA, real SmolLM2,
real Dagster materializations."""

import pytest
import yaml
from dagster import DagsterInstance, MultiPartitionKey, materialize

from prompt_ft_assets.assets.data import dataset
from prompt_ft_assets.assets.prompted import prompt_predictions, prompt_run_metrics
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.prompt_runner import CACHE_TABLE
from prompt_ft_assets.prompting import example_seed
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

EVAL_LIMIT = 4
RUNS = 3
TEMPLATE_SLUG = "make_sense_yes_no"


def _materialize_dataset(tmp_path, state_dir, share_runs: bool):
    spec_data = {
        "name": "sharing",
        "datasets": [{**REGISTRY_ENTRIES["glue_cola"], "eval_limit": EVAL_LIMIT, "templates": ["Make sense yes no"]}],
        "prompt_models": [SMOLLM2],
        "prompting": {"runs": RUNS, "share_runs": share_runs, "max_rationale_chars": 60},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data))
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    resources = {"experiment": ExperimentResource(spec_path=str(spec_path)),
                 "results": ResultsStoreResource(root=str(state_dir / "results"))}
    assert materialize([dataset], partition_key="glue_cola", instance=instance, resources=resources).success
    return instance, resources, ResultsStore(state_dir / "results")


def _key(run: int) -> MultiPartitionKey:
    return MultiPartitionKey({"dataset": "glue_cola", "prompt_run": f"smollm2-135m__{TEMPLATE_SLUG}__r{run}"})


def _cache_rows(store: ResultsStore) -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {CACHE_TABLE}")["n"].iloc[0])


@pytest.mark.slow
def test_first_run_computes_all_runs(tmp_path, state_dir):
    instance, resources, store = _materialize_dataset(tmp_path, state_dir, share_runs=True)

    # Run 1 is materialized first: it answers runs 0, 1 and 2 in one call.
    assert materialize([prompt_predictions, prompt_run_metrics], partition_key=_key(1), instance=instance,
                       resources=resources).success
    assert _cache_rows(store) == RUNS * EVAL_LIMIT
    first = store.read("prompt_predictions", str(_key(1)))
    assert not first["from_cache"].any()
    assert first["busy_s"].notna().all()
    assert (first["busy_s"] >= 0).all()

    for run in (0, 2):
        assert materialize([prompt_predictions, prompt_run_metrics], partition_key=_key(run), instance=instance,
                           resources=resources).success
        predictions = store.read("prompt_predictions", str(_key(run)))
        assert len(predictions) == EVAL_LIMIT
        assert predictions["idx"].is_unique
        assert predictions["from_cache"].all()
        assert set(predictions["run"]) == {run}
        assert predictions["seed"].tolist() == [example_seed(run, int(idx)) for idx in predictions["idx"]]
        assert predictions["valid"].all()
    # Nothing was answered twice, and each run's cost is its share of the shared call.
    assert _cache_rows(store) == RUNS * EVAL_LIMIT
    busy = [store.read("prompt_predictions", str(_key(run)))["busy_s"].sum() for run in range(RUNS)]
    costs = [store.read("prompt_run_metrics", str(_key(run)))["seconds_per_1000"].iloc[0] for run in range(RUNS)]
    for seconds, cost in zip(busy, costs):
        assert cost == pytest.approx(seconds / EVAL_LIMIT * 1000)


@pytest.mark.slow
def test_share_runs_off_answers_one_run_per_partition(tmp_path, state_dir):
    instance, resources, store = _materialize_dataset(tmp_path, state_dir, share_runs=False)
    assert materialize([prompt_predictions], partition_key=_key(0), instance=instance, resources=resources).success
    assert _cache_rows(store) == EVAL_LIMIT
    assert materialize([prompt_predictions], partition_key=_key(1), instance=instance, resources=resources).success
    assert not store.read("prompt_predictions", str(_key(1)))["from_cache"].any()
    assert _cache_rows(store) == 2 * EVAL_LIMIT
