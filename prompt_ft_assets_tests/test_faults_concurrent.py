"""Two materializations of the same partition at once: one runs, the other fails with a clear
message, and no example is stored twice. Real `dagster asset materialize` subprocesses."""

import os
import subprocess

import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef

from prompt_ft_assets.assets.data import dataset

from .test_faults_kill import (
    EVAL_LIMIT,
    FINETUNE_PARTITION,
    MATERIALIZE,
    PROCESS_TIMEOUT_S,
    Study,
    assert_checkpoint_whole,
    assert_store_consistent,
)

pytestmark = pytest.mark.slow

LOCK_MESSAGE = "is already being materialized"


def test_held_lock_rejects_second_run(tmp_path, robustness_tally):
    """While this process holds the partition's lock, a materialization of it fails at once and writes nothing."""
    study = Study(tmp_path)
    command = [*MATERIALIZE, "--select", "dataset", "--partition", "glue_cola"]

    with study.store.partition_lock("dataset", "glue_cola"):
        robustness_tally.fault()
        blocked = subprocess.run(command, env=study.env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)

    assert blocked.returncode != 0
    output = blocked.stdout + blocked.stderr
    assert f"dataset partition 'glue_cola' {LOCK_MESSAGE} (pid {os.getpid()} on" in output
    assert "wait for that run to finish" in output
    assert not study.store.exists("examples", "glue_cola")

    study.materialize_here([dataset], "glue_cola")
    examples = study.store.read("examples", "glue_cola")
    robustness_tally.rows(expected=8551 + 1043, stored=len(examples.drop_duplicates(["split", "idx"])))
    assert len(examples) == 8551 + 1043
    assert not examples.duplicated(["split", "idx"]).any()


def test_two_finetunes_of_one_partition(tmp_path, robustness_tally):
    study = Study(tmp_path)
    study.materialize_here([dataset], "glue_cola")
    command = [*MATERIALIZE, "--select", "finetuned_encoder", "--partition", FINETUNE_PARTITION]

    processes = [
        subprocess.Popen(command, env=study.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    robustness_tally.fault()
    outputs = [process.communicate(timeout=PROCESS_TIMEOUT_S)[0] for process in processes]

    statuses = [process.returncode for process in processes]
    assert 0 in statuses, outputs
    for status, output in zip(statuses, outputs):
        if status != 0:
            assert f"finetuned_encoder partition '{FINETUNE_PARTITION}' {LOCK_MESSAGE}" in output, output[-3000:]
    assert_store_consistent(study.store)
    predictions = study.store.read("finetune_predictions", FINETUNE_PARTITION)
    robustness_tally.rows(expected=EVAL_LIMIT, stored=predictions["idx"].nunique())
    assert len(predictions) == EVAL_LIMIT
    assert predictions["idx"].is_unique
    assert_checkpoint_whole(study.state / "checkpoints" / "glue_cola+minilm-l6__nall__s0")
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(study.home))) as instance:
        materializations = instance.fetch_materializations(AssetKey("finetuned_encoder"), limit=10).records
    assert len(materializations) == statuses.count(0)
