"""Eight partitions materialized at once by separate processes while a reader holds the store open,
with the eight runs sharing their prompts through the run group's lock."""

import os
import subprocess
import sys
import threading
import time

import duckdb
import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

from .study_specs import REGISTRY_ENTRIES, SMOLLM2

pytestmark = pytest.mark.slow

RUNS = 8
EVAL_LIMIT = 2
PROCESS_TIMEOUT_S = 600


def _spec(folder):
    dataset = {**REGISTRY_ENTRIES["glue_cola"], "eval_limit": EVAL_LIMIT}
    spec = {"name": "parallel", "datasets": [dataset], "prompt_models": [SMOLLM2],
            "prompting": {"runs": RUNS, "max_rationale_chars": 30, "n_threads": 1}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _reader(views_database, stop: threading.Event, errors: list, queries: list):
    """Hold the views database open read-write, as a notebook would, and query it until stopped."""
    try:
        with duckdb.connect(str(views_database)) as connection:
            while not stop.is_set():
                queries.append(connection.execute("SELECT count(*) FROM examples").fetchone()[0])
                time.sleep(0.2)
    except duckdb.Error as error:  # recorded so the test fails with the reader's error
        errors.append(error)


def test_eight_partitions_with_open_reader(tmp_path):
    state = tmp_path / "state"
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "PROMPT_FT_STATE_DIR": str(state), "DAGSTER_HOME": str(home),
           "PROMPT_FT_EXPERIMENT": str(_spec(tmp_path))}
    spec = load_spec(env["PROMPT_FT_EXPERIMENT"])
    materialize = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "prompt_ft_assets.definitions"]

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        sync_partitions(instance, spec)
    subprocess.run([*materialize, "--select", "dataset,prompt_templates", "--partition", "glue_cola"],
                   env=env, check=True, capture_output=True, timeout=PROCESS_TIMEOUT_S)
    store = ResultsStore(state / "results")
    views = state / "results.duckdb"
    store.write_views_database(views)

    stop, errors, queries = threading.Event(), [], []
    reader = threading.Thread(target=_reader, args=(views, stop, errors, queries))
    reader.start()
    try:
        processes = [
            subprocess.Popen(
                [*materialize, "--select", "prompt_predictions,prompt_run_metrics",
                 "--partition", f"glue_cola|smollm2-135m__editing__r{run}"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for run in range(RUNS)
        ]
        outputs = [process.communicate(timeout=PROCESS_TIMEOUT_S)[0] for process in processes]
        # A summary written while the reader holds the views file must not fail either.
        store.write_views_database(views)
    finally:
        stop.set()
        reader.join()

    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert errors == []
    assert queries and queries[-1] == 8551 + 1043
    predictions = store.read_table("prompt_predictions")
    assert len(predictions) == RUNS * EVAL_LIMIT
    assert predictions.groupby("run").size().to_dict() == {run: EVAL_LIMIT for run in range(RUNS)}
    assert len(store.read_table("prompt_run_metrics")) == RUNS
    # With prompting.share_runs, the partition that took the run group's lock first computed all runs.
    # The seven that waited read the cache, so no run was computed twice.
    assert len(store.read_table("prediction_cache")) == RUNS * EVAL_LIMIT
    assert int((~predictions.groupby("run")["from_cache"].all()).sum()) == 1

