"""SIGKILL in the middle of a prompted partition, then a rerun: every example is stored once, and
the answers flushed before the kill are reused, not computed again.

The partition runs as `dagster asset materialize` in its own process group, with the real SmolLM2
GGUF on real CoLA sentences, decoding several examples at once. The test kills the group as soon
as the first chunk of answers is in the prediction cache.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.prompt_runner import CACHE_CHUNK, CACHE_TABLE
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

pytestmark = pytest.mark.slow

EVAL_LIMIT = 3 * CACHE_CHUNK
PARTITION = "glue_cola|smollm2-135m__make_sense_yes_no__r0"
PROCESS_TIMEOUT_S = 900
MARKER_TIMEOUT_S = 600
POLL_S = 0.005
MATERIALIZE = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "prompt_ft_assets.definitions"]


@pytest.fixture
def study(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    spec_path = tmp_path / "spec.yaml"
    dataset = {**REGISTRY_ENTRIES["glue_cola"], "eval_limit": EVAL_LIMIT, "templates": ["Make sense yes no"]}
    spec = {"name": "resume", "datasets": [dataset], "prompt_models": [{**SMOLLM2, "backend": {"parallel": 4}}],
            "prompting": {"runs": 1, "max_rationale_chars": 60}}
    spec_path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PROMPT_FT_STATE_DIR": str(tmp_path / "state"), "DAGSTER_HOME": str(home),
           "PROMPT_FT_EXPERIMENT": str(spec_path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        sync_partitions(instance, load_spec(spec_path))
    completed = subprocess.run([*MATERIALIZE, "--select", "dataset", "--partition", "glue_cola"], env=env,
                               capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {"folder": tmp_path, "env": env, "store": ResultsStore(tmp_path / "state" / "results")}


def _cache_files(store: ResultsStore) -> list[Path]:
    return store.files(CACHE_TABLE)


def _cached_rows(store: ResultsStore):
    import pandas as pd

    files = _cache_files(store)
    return pd.concat([pq.read_table(path).to_pandas() for path in files], ignore_index=True) if files else pd.DataFrame()


def test_killed_partition_resumes_without_recomputing_or_duplicating(study):
    store = study["store"]
    log = study["folder"] / "killed.log"
    command = [*MATERIALIZE, "--select", "prompt_predictions", "--partition", PARTITION]
    with log.open("w") as output:
        process = subprocess.Popen(command, env=study["env"], stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + MARKER_TIMEOUT_S
    while not _cache_files(store):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no cache chunk before the run ended or {MARKER_TIMEOUT_S} s passed: {log.read_text()[-3000:]}")
        time.sleep(POLL_S)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL

    before = _cached_rows(store)
    assert 0 < len(before) < EVAL_LIMIT, "the run was not killed mid-partition"
    assert before["cache_key"].is_unique
    assert not store.exists("prompt_predictions", PARTITION)
    assert not [p for p in store.table_dir(CACHE_TABLE).iterdir() if p.name.endswith(".parquet") and p.name.startswith(".")]

    rerun = subprocess.run(command, env=study["env"], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(before)} of {EVAL_LIMIT} answers found in the cache" in rerun.stdout + rerun.stderr

    predictions = store.read("prompt_predictions", PARTITION)
    assert len(predictions) == EVAL_LIMIT
    assert predictions["idx"].is_unique
    reused = predictions["cache_key"].isin(set(before["cache_key"]))
    assert predictions["from_cache"].tolist() == reused.tolist()
    assert int(reused.sum()) == len(before)
    after = _cached_rows(store)
    assert len(after) == EVAL_LIMIT
    assert after["cache_key"].is_unique
    kept = after.set_index("cache_key").loc[before["cache_key"]]
    assert kept["text"].tolist() == before["text"].tolist()
    assert kept["created_at"].tolist() == before["created_at"].tolist()
    stored_text = predictions.set_index("cache_key").loc[before["cache_key"], "raw_output"]
    assert stored_text.tolist() == before["text"].tolist()
    assert predictions["valid"].all(), predictions.loc[~predictions["valid"], "raw_output"].tolist()
