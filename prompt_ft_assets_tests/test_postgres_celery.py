"""A queued run on the PostgreSQL instance, started by the daemon, with its steps run by a Celery worker.

Everything is real and on this machine: PostgreSQL, `dagster-daemon`, the default run launcher, a
`dagster-celery` worker process, and kombu's filesystem transport standing in for RabbitMQ or
Redis as the broker. The run config is the checked-in deploy/run_config/celery_executor.yaml
plus the transport's folders.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus

from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore

from .conftest import PROJECT_ROOT
from .test_postgres_instance import POSTGRES_YAML, running_postgres

pytestmark = pytest.mark.slow

CELERY_RUN_CONFIG = PROJECT_ROOT / "deploy" / "run_config" / "celery_executor.yaml"
RUN_TIMEOUT_S = 300
BIN = Path(sys.executable).parent


def _spec(folder: Path, cola_dir: Path) -> Path:
    dataset = {
        "id": "glue_cola",
        "source": {"local_dir": str(cola_dir), "file_columns": ["source", "label", "original_star", "sentence"]},
        "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"],
        "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": ["editing"],
        "eval_limit": 4, "train_limit": 16,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "celery", "datasets": [dataset]}))
    return path


def _transport_config(folder: Path) -> dict:
    """Run config that points Celery at a broker folder on this machine."""
    for name in ("broker", "processed", "control"):
        (folder / name).mkdir()
    # control_folder defaults to ./control in the working directory; keep it in the test's folder.
    options = {"data_folder_in": str(folder / "broker"), "data_folder_out": str(folder / "broker"),
               "processed_folder": str(folder / "processed"), "control_folder": str(folder / "control")}
    return {"execution": {"config": {"config_source": {"broker_transport_options": options}}}}


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    # A session of its own, so stopping it also stops the celery process the worker command starts.
    return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _wait_for_finished_run(instance: DagsterInstance, logs: list[Path]):
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        records = instance.get_run_records()
        if records and all(record.dagster_run.is_finished for record in records):
            return records
        time.sleep(2)
    tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)
    pytest.fail(f"no run finished within {RUN_TIMEOUT_S} s; runs: {[r.dagster_run.status for r in records]}\n{tails}")


def test_queued_run_steps_on_celery_worker(tmp_path, monkeypatch, cola_dir):
    shared = tmp_path / "shared_results"
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_YAML, home / "dagster.yaml")
    transport = _transport_config(tmp_path)
    worker_config = yaml.safe_load(CELERY_RUN_CONFIG.read_text())
    worker_config["execution"]["config"].update(transport["execution"]["config"])
    (tmp_path / "worker.yaml").write_text(yaml.safe_dump(worker_config))
    (tmp_path / "transport.yaml").write_text(yaml.safe_dump(transport))

    with running_postgres("dagster_celery") as server:
        env = {
            **os.environ, **server.environment(),
            "DAGSTER_HOME": str(home), "PROMPT_FT_EXECUTOR": "celery",
            "PROMPT_FT_EXPERIMENT": str(_spec(tmp_path, cola_dir)), "PROMPT_FT_STATE_DIR": str(tmp_path / "state"),
            "PROMPT_FT_RESULTS_ROOT": f"file://{shared}",
            "PROMPT_FT_CELERY_BROKER": "filesystem://", "PROMPT_FT_CELERY_BACKEND": f"file://{tmp_path / 'celery_results'}",
            # The worker command starts `celery` by name.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        (tmp_path / "celery_results").mkdir()

        with DagsterInstance.get() as instance:
            sync_partitions(instance, load_spec(env["PROMPT_FT_EXPERIMENT"]))
            worker = _start([str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                             "-y", str(tmp_path / "worker.yaml"), "--", "--pool=solo"], env, tmp_path / "worker.log")
            daemon = _start([str(BIN / "dagster-daemon"), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")], env,
                            tmp_path / "daemon.log")
            try:
                launched = subprocess.run(
                    [str(BIN / "dagster"), "job", "launch", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-j", "data_job",
                     "-c", str(CELERY_RUN_CONFIG), "-c", str(tmp_path / "transport.yaml"),
                     "--tags", json.dumps({"dagster/partition": "glue_cola"})],
                    env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                )
                assert launched.returncode == 0, launched.stderr[-3000:]
                records = _wait_for_finished_run(instance, [tmp_path / "daemon.log", tmp_path / "worker.log"])
            finally:
                _stop(daemon)
                _stop(worker)

            assert len(records) == 1
            run = records[0].dagster_run
            assert run.status == DagsterRunStatus.SUCCESS
            events = [entry.dagster_event for entry in instance.all_logs(run.run_id) if entry.is_dagster_event]

    run_worker_pids = {event.pid for event in events if event.event_type_value == "ENGINE_EVENT" and event.pid}
    step_pids = {event.step_key: event.pid for event in events if event.event_type_value == "STEP_START"}
    celery_messages = [event.message for event in events if "in celery worker" in (event.message or "")]
    assert set(step_pids) == {"dataset", "prompt_templates"}
    # Steps ran in the Celery worker's process, not in the run worker that the daemon launched.
    assert not set(step_pids.values()) & run_worker_pids
    assert len(celery_messages) == 2
    store = ResultsStore(f"file://{shared}")
    assert store.tables() == ["examples", "prompt_templates"]
    assert len(store.read_table("examples")) == 8551 + 1043
