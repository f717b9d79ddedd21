"""SIGKILL in the middle of a finetune and of summary_tables: the store stays consistent.

Each test runs `dagster asset materialize` as a real subprocess and watches for a progress marker:
a log line, the checkpoint's temporary folder, or a file being replaced. It then kills the process
group with SIGKILL. Afterwards every Parquet file that readers see must be whole and the
partition's previous file intact, and materializing again must store each example exactly once.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from dagster import DagsterInstance, materialize
from dagster._core.instance.ref import InstanceRef
from safetensors import safe_open

from prompt_ft_assets.assets.analysis import summary_tables
from prompt_ft_assets.assets.data import dataset
from prompt_ft_assets.assets.finetuned import finetune_metrics, finetuned_encoder
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

from .study_specs import MINILM, REGISTRY_ENTRIES

pytestmark = pytest.mark.slow

EVAL_LIMIT = 32
TRAIN_LIMIT = 32
PROCESS_TIMEOUT_S = 300
MARKER_TIMEOUT_S = 240
POLL_S = 0.005
FINETUNE_PARTITION = "glue_cola|minilm-l6__nall__s0"
MATERIALIZE = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "prompt_ft_assets.definitions"]


class Study:
    """A state folder, a Dagster home and a spec, shared by the subprocesses of one test module."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state = folder / "state"
        self.home = folder / "dagster_home"
        self.home.mkdir(parents=True)
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.spec_path = folder / "spec.yaml"
        dataset = {**REGISTRY_ENTRIES["glue_cola"], "eval_limit": EVAL_LIMIT, "train_limit": TRAIN_LIMIT}
        spec = {"name": "kill", "datasets": [dataset], "encoders": [MINILM],
                "finetune": {"seeds": [0], "num_epochs": 1, "learning_rate": 1e-4, "batch_size": 16}}
        self.spec_path.write_text(yaml.safe_dump(spec))
        # The in-process executor runs each step in the materialize process itself, which saves a
        # second import of Dagster and torch per run; the kill still ends the whole run.
        self.env = {**os.environ, "PROMPT_FT_STATE_DIR": str(self.state), "DAGSTER_HOME": str(self.home),
                    "PROMPT_FT_EXPERIMENT": str(self.spec_path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "PROMPT_FT_EXECUTOR": "in_process"}
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home))) as instance:
            sync_partitions(instance, load_spec(self.spec_path))
        self.store = ResultsStore(self.state / "results")
        self.logs = 0

    def materialize(self, select: str, partition: str | None = None) -> subprocess.CompletedProcess:
        command = [*MATERIALIZE, "--select", select, *(["--partition", partition] if partition else [])]
        completed = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return completed

    def materialize_here(self, assets: list, partition: str | None = None) -> None:
        """Materialize in this process, against the same instance and state folder as the subprocesses.

        Setup and the final rerun run here because each subprocess spends seconds importing Dagster.
        """
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PROMPT_FT_STATE_DIR", str(self.state))
            with DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home))) as instance:
                result = materialize(
                    assets, partition_key=partition, instance=instance,
                    resources={"experiment": ExperimentResource(spec_path=str(self.spec_path)),
                               "results": ResultsStoreResource(root=str(self.store.root))},
                )
        assert result.success

    def start(self, select: str, partition: str | None = None) -> tuple[subprocess.Popen, Path]:
        """Start a materialization in its own process group, with its output going to a log file."""
        self.logs += 1
        log = self.folder / f"run{self.logs}.log"
        command = [*MATERIALIZE, "--select", select, *(["--partition", partition] if partition else [])]
        with log.open("w") as output:
            process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return process, log


def wait_for(process: subprocess.Popen, condition, what: str) -> bool:
    """Poll condition until it is true (returns True) or the process exits first (returns False)."""
    deadline = time.monotonic() + MARKER_TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return bool(condition())
        time.sleep(POLL_S)
    kill_group(process)
    pytest.fail(f"no {what} within {MARKER_TIMEOUT_S} s")


def kill_group(process: subprocess.Popen) -> int:
    """SIGKILL the process group this test started; returns the exit status (-9 when killed)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return process.wait(timeout=60)


def log_contains(log: Path, text: str):
    return lambda: log.is_file() and text in log.read_text(errors="replace")


def assert_store_consistent(store: ResultsStore) -> None:
    """Every Parquet file a reader sees is whole, and no temporary file is visible to readers."""
    for table in store.tables():
        for path in store.files(table):
            assert not path.name.endswith(".tmp")
            pq.read_table(path)
        store.read_table(table)
    hidden = [p for p in store.root.rglob("*.parquet") if p.name.startswith(".")]
    assert hidden == []


def assert_checkpoint_whole(folder: Path) -> None:
    """A checkpoint folder is whole when its config parses and every tensor of the weights reads."""
    json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        for name in weights.keys():
            weights.get_tensor(name)


def folder_signature(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in folder.iterdir()} if folder.is_dir() else {}


def _checkpoint(study: Study) -> Path:
    return study.state / "checkpoints" / "glue_cola+minilm-l6__nall__s0"


def _check_after_kill(study: Study, before: bytes, robustness_tally) -> None:
    assert_store_consistent(study.store)
    stored = study.store.path("finetune_predictions", FINETUNE_PARTITION)
    if stored.read_bytes() != before:
        # The kill came after the atomic rename: the new file must then be whole.
        assert pq.read_table(stored).num_rows == EVAL_LIMIT
    predictions = study.store.read("finetune_predictions", FINETUNE_PARTITION)
    robustness_tally.rows(expected=EVAL_LIMIT, stored=predictions["idx"].nunique())
    assert predictions["idx"].is_unique
    checkpoint = _checkpoint(study)
    if checkpoint.exists():
        assert_checkpoint_whole(checkpoint)


def _kill_at(study: Study, condition_for, what: str, delay_s: float = 0.0) -> int:
    """Start a finetune and SIGKILL it delay_s after condition_for(log) is true; returns the exit status."""
    process, log = study.start("finetuned_encoder,finetune_metrics", FINETUNE_PARTITION)
    if not wait_for(process, condition_for(log), what):
        pytest.fail(f"the finetune exited (status {process.returncode}) before {what}:\n{log.read_text()[-2000:]}")
    time.sleep(delay_s)
    return kill_group(process)


def test_kill_finetune_at_three_points(tmp_path, robustness_tally):
    """Kill after the finetune starts, while the checkpoint's temporary folder is written, and right
    after the new checkpoint replaced the old one; then materialize again."""
    study = Study(tmp_path)
    study.materialize_here([dataset], "glue_cola")
    study.materialize_here([finetuned_encoder, finetune_metrics], FINETUNE_PARTITION)
    before = study.store.path("finetune_predictions", FINETUNE_PARTITION).read_bytes()
    checkpoint = _checkpoint(study)
    old_checkpoint = folder_signature(checkpoint)

    def started(log):
        return log_contains(log, "finetuning minilm-l6 (seed 0)")

    # Loading the encoder and training take seconds, so half a second later the run is inside them.
    status = _kill_at(study, started, "the log line of the finetune's start", delay_s=0.5)
    assert status == -signal.SIGKILL
    robustness_tally.fault()
    _check_after_kill(study, before, robustness_tally)
    assert study.store.path("finetune_predictions", FINETUNE_PARTITION).read_bytes() == before
    assert folder_signature(checkpoint) == old_checkpoint

    def saving(log):
        prefix = f".{checkpoint.name}."
        return lambda: any(p.name.startswith(prefix) and p.name.endswith(".tmp") for p in checkpoint.parent.iterdir())

    status = _kill_at(study, saving, "the temporary checkpoint folder")
    assert status == -signal.SIGKILL
    robustness_tally.fault()
    _check_after_kill(study, before, robustness_tally)
    assert study.store.path("finetune_predictions", FINETUNE_PARTITION).read_bytes() == before
    assert folder_signature(checkpoint) == old_checkpoint

    old_inode = checkpoint.stat().st_ino

    def replaced(log):
        return lambda: checkpoint.is_dir() and checkpoint.stat().st_ino != old_inode

    status = _kill_at(study, replaced, "the new checkpoint folder")
    assert status == -signal.SIGKILL, "the run finished before it could be killed after the checkpoint rename"
    robustness_tally.fault()
    _check_after_kill(study, before, robustness_tally)

    study.materialize_here([finetuned_encoder, finetune_metrics], FINETUNE_PARTITION)
    assert_store_consistent(study.store)
    predictions = study.store.read("finetune_predictions", FINETUNE_PARTITION)
    robustness_tally.rows(expected=EVAL_LIMIT, stored=predictions["idx"].nunique())
    assert len(predictions) == EVAL_LIMIT
    assert predictions["idx"].is_unique
    assert len(study.store.read("finetune_metrics", FINETUNE_PARTITION)) == 1
    assert_checkpoint_whole(checkpoint)
    leftovers = [p.name for p in checkpoint.parent.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []
    temporaries = [p.name for p in study.store.table_dir("finetune_predictions").iterdir() if p.name.endswith(".tmp")]
    assert temporaries == []


# ---- summary_tables ---------------------------------------------------------------------------

MODELS = [("smollm2-135m", "smollm2", 0.135), ("gemma3-270m", "gemma", 0.27), ("qwen-0.5b", "qwen", 0.5)]
TEMPLATES = ["editing", "is_this_correct", "make_sense_yes_no"]
RUNS = 3
ENCODERS = [("minilm-l6", 22.7), ("ettin-17m", 17.0)]
SEEDS = [0, 1, 2]


def _metric_values(rng: np.random.Generator) -> dict[str, float]:
    precision, recall = rng.uniform(0.3, 0.8, size=2)
    return {"macro_precision": precision, "macro_recall": recall, "macro_f1": 2 * precision * recall / (precision + recall)}


def write_prepared_metrics(store: ResultsStore, seed: int) -> None:
    """Per-run metrics rows as the metrics assets store them, one file per partition, drawn with seed."""
    rng = np.random.default_rng(seed)
    flags = {"flag_one_class": False, "flag_near_chance": False, "flag_high_invalid": False}
    for model, family, params_b in MODELS:
        for template in TEMPLATES:
            for run in range(RUNS):
                row = {"dataset": "glue_cola", "method": "generate", "model": model, "template": template, "run": run,
                       "family": family, "params_b": params_b, "is_moe": False, "invalid_rate": rng.uniform(0, 0.2),
                       **_metric_values(rng), **flags}
                store.write("prompt_run_metrics", f"glue_cola|{model}__{template}__r{run}", pd.DataFrame([row]))
    votes = [{"dataset": "glue_cola", "method": "generate", "model": model, "template": template, "k": 3, "runs": "0,1,2",
              **_metric_values(rng)} for model, _, _ in MODELS for template in TEMPLATES]
    store.write("vote_metrics", "glue_cola", pd.DataFrame(votes))
    for encoder, params_m in ENCODERS:
        for seed_value in SEEDS:
            row = {"dataset": "glue_cola", "encoder": encoder, "seed": seed_value, "method": "finetune", "family": "bert",
                   "params_m": params_m, "train_size": pd.NA, "train_examples": 8551, **_metric_values(rng), **flags}
            frame = pd.DataFrame([row])
            frame["train_size"] = frame["train_size"].astype("Int64")
            store.write("finetune_metrics", f"glue_cola|{encoder}__nall__s{seed_value}", frame)


def _summary_state(study: Study) -> dict[str, object]:
    """The summary tables' frames and the CSV and markdown texts, keyed by file."""
    state: dict[str, object] = {}
    for table in study.store.tables():
        if table.startswith("summary_"):
            state[table] = study.store.read(table, "all")
    tables_dir = study.state / "tables"
    for path in sorted(tables_dir.glob("*.csv")) + sorted(tables_dir.glob("*.md")):
        state[path.name] = path.read_text()
    return state


def _assert_each_file_old_or_new(killed: dict, old: dict, new: dict) -> None:
    for name, value in killed.items():
        if isinstance(value, pd.DataFrame):
            assert value.equals(old[name]) or value.equals(new[name]), name
        else:
            assert value in (old[name], new[name]), name


def _file_changed(paths_and_times: dict[Path, int]):
    def changed() -> bool:
        for path, mtime in paths_and_times.items():
            try:
                if path.stat().st_mtime_ns != mtime:
                    return True
            except FileNotFoundError:
                continue
        return False
    return changed


def test_kill_during_summary_tables(tmp_path, robustness_tally):
    study = Study(tmp_path)
    write_prepared_metrics(study.store, seed=1)
    study.materialize_here([summary_tables])
    old = _summary_state(study)
    assert old["summary_by_prompt_model"]["n"].tolist() == [RUNS] * len(MODELS) * len(TEMPLATES)

    # New metrics, so every table the killed runs write differs from the old one.
    write_prepared_metrics(study.store, seed=2)
    markers = {
        "first summary table replaced": [study.store.path("summary_by_prompt_model", "all")],
        "a middle CSV replaced": [study.state / "tables" / "by_encoder.csv"],
        "the views database written": [study.state / "results.duckdb"],
    }
    killed_states = []
    for marker, paths in markers.items():
        times = {path: path.stat().st_mtime_ns for path in paths}
        process, log = study.start("summary_tables")
        assert wait_for(process, _file_changed(times), marker)
        status = kill_group(process)
        if status != -signal.SIGKILL:
            pytest.fail(f"summary_tables finished (status {status}) before the kill at: {marker}\n{log.read_text()[-2000:]}")
        robustness_tally.fault()
        assert_store_consistent(study.store)
        killed_states.append(_summary_state(study))

    study.materialize_here([summary_tables])
    new = _summary_state(study)
    for killed in killed_states:
        _assert_each_file_old_or_new(killed, old, new)
    assert any(not killed["summary_by_prompt_model"].equals(old["summary_by_prompt_model"]) for killed in killed_states)
    by_prompt_model = new["summary_by_prompt_model"]
    assert not by_prompt_model.duplicated(["dataset", "method", "model", "template"]).any()
    robustness_tally.rows(expected=len(MODELS) * len(TEMPLATES) * RUNS, stored=int(by_prompt_model["n"].sum()))
    assert by_prompt_model["n"].tolist() == [RUNS] * len(MODELS) * len(TEMPLATES)
    assert not [p for p in study.state.rglob("*.tmp")]
