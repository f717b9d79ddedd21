"""Secrets and network. Tokens never reach logs, stored files or error messages. The UI binds to
127.0.0.1 and Dagster telemetry is off. A spec without hub sources runs with HF_HUB_OFFLINE=1 and
connects to no host.

The study tests run `prompt-ft run` in a subprocess under a Python audit hook that records every
name lookup and socket connection, with a random token in HF_TOKEN and in an API key variable.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from prompt_ft_assets.cli import build_parser
from prompt_ft_assets.hub_policy import OFFLINE_VARIABLE, apply_hub_policy
from prompt_ft_assets.instance_home import prepare_dagster_home
from prompt_ft_assets.resources import ExperimentResource
from prompt_ft_assets.spec import hub_sources, load_spec

from .conftest import PROJECT_ROOT
from .study_specs import REGISTRY_ENTRIES, SMOLLM2

STUDY_TIMEOUT_S = 600
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
API_KEY_VARIABLE = "PROMPT_FT_TEST_SERVER_TOKEN"
HUB_MODEL = {
    "name": "hub-model", "source": {"hf_repo": "example-org/private-model-GGUF", "hf_file": "model-q8_0.gguf"},
    "family": "llama", "params_b": 1.0, "generation": "3", "temperature": 0.5,
}

# Runs the CLI with an audit hook that writes each network event, and HF_HUB_OFFLINE at exit, to a file.
AUDITED_CLI = """
import json, os, sys

events = open(os.environ["PROMPT_FT_TEST_NETWORK_LOG"], "a", encoding="utf-8")

def record(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        events.write(json.dumps({"event": event, "args": repr(args)}) + "\\n")
        events.flush()

sys.addaudithook(record)
# A loopback lookup of our own shows that the hook records events.
import socket
socket.getaddrinfo("127.0.0.1", 9)
from prompt_ft_assets.cli import main

status = main(sys.argv[1:])
events.write(json.dumps({"event": "exit", "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE")}) + "\\n")
events.close()
sys.exit(status)
"""


def test_ui_binds_to_loopback_by_default():
    args = build_parser().parse_args(["ui"])

    assert args.host == "127.0.0.1"
    assert args.port == 3000


def test_ui_host_is_configurable():
    assert build_parser().parse_args(["ui", "--host", "0.0.0.0"]).host == "0.0.0.0"


def test_no_product_code_binds_all_interfaces():
    for path in sorted((PROJECT_ROOT / "prompt_ft_assets").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "0.0.0.0" not in text, path
        assert "INADDR_ANY" not in text, path


def test_project_dagster_yaml_disables_telemetry():
    settings = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())

    assert settings["telemetry"]["enabled"] is False


def test_prepared_instance_has_telemetry_off(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("DAGSTER_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(tmp_path / "state"))

    home = prepare_dagster_home()

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert instance.telemetry_enabled is False


def _local_spec(folder: Path, models: list[dict], eval_limit: int = 2) -> Path:
    entry = {**REGISTRY_ENTRIES["glue_cola"], "eval_limit": eval_limit, "train_limit": 8, "templates": ["editing"]}
    spec = {"name": "secrets", "datasets": [entry], "prompt_models": models,
            "prompting": {"runs": 1, "max_rationale_chars": 16}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_hub_sources_of_local_and_hub_specs(tmp_path):
    local = load_spec(_local_spec(tmp_path, [SMOLLM2]))
    assert hub_sources(local) == []

    hub = load_spec(_local_spec(tmp_path, [SMOLLM2, HUB_MODEL]))
    assert hub_sources(hub) == ["prompt_models.1.source.hf_repo: example-org/private-model-GGUF"]

    entry = {**REGISTRY_ENTRIES["glue_cola"], "source": {"local_dir": str(tmp_path / "absent"), "hf_id": "nyu-mll/glue"}}
    fallback = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    fallback["datasets"] = [entry]
    (tmp_path / "fallback.yaml").write_text(yaml.safe_dump(fallback))
    assert "datasets.0.source.hf_id: nyu-mll/glue" in hub_sources(load_spec(tmp_path / "fallback.yaml"))


def test_hub_policy_sets_offline_only_for_local_specs(tmp_path, monkeypatch):
    monkeypatch.delenv(OFFLINE_VARIABLE, raising=False)
    assert apply_hub_policy(load_spec(_local_spec(tmp_path, [SMOLLM2, HUB_MODEL]))) is False
    assert OFFLINE_VARIABLE not in os.environ

    assert apply_hub_policy(load_spec(_local_spec(tmp_path, [SMOLLM2]))) is True
    assert os.environ[OFFLINE_VARIABLE] == "1"

    monkeypatch.setenv(OFFLINE_VARIABLE, "0")
    assert apply_hub_policy(load_spec(_local_spec(tmp_path, [SMOLLM2]))) is False
    assert os.environ[OFFLINE_VARIABLE] == "0"


def test_experiment_resource_applies_the_hub_policy(tmp_path, monkeypatch):
    """A run launched by the UI's daemon loads the spec through the resource, not through the CLI."""
    monkeypatch.delenv(OFFLINE_VARIABLE, raising=False)
    ExperimentResource(spec_path=str(_local_spec(tmp_path, [SMOLLM2, HUB_MODEL]))).load()
    assert OFFLINE_VARIABLE not in os.environ

    ExperimentResource(spec_path=str(_local_spec(tmp_path, [SMOLLM2]))).load()
    assert os.environ[OFFLINE_VARIABLE] == "1"


def _run_audited(folder: Path, spec_path: Path, env_changes: dict[str, str], *stages: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    network_log = folder / "network.jsonl"
    script = folder / "audited_cli.py"
    script.write_text(AUDITED_CLI)
    env = {key: value for key, value in os.environ.items() if key not in (OFFLINE_VARIABLE, "DAGSTER_HOME")}
    env.update({"PROMPT_FT_STATE_DIR": str(folder / "state"), "PROMPT_FT_TEST_NETWORK_LOG": str(network_log),
                **env_changes})
    stage_args = [argument for stage in stages for argument in ("--stage", stage)]
    completed = subprocess.run(
        [sys.executable, str(script), "run", str(spec_path), *stage_args],
        env=env, capture_output=True, text=True, timeout=STUDY_TIMEOUT_S, cwd=folder,
    )
    events = [json.loads(line) for line in network_log.read_text().splitlines()] if network_log.is_file() else []
    return completed, events


def _remote_hosts(events: list[dict]) -> list[dict]:
    """Network events that name a host other than this machine's loopback; Unix sockets are local."""
    assert any(event["event"] == "socket.getaddrinfo" and "'127.0.0.1', 9" in event["args"] for event in events), (
        "the audit hook recorded nothing, not even the script's own loopback lookup"
    )
    remote = []
    for event in events:
        if event["event"] == "exit":
            continue
        arguments = event["args"]
        if event["event"] == "socket.connect" and "AF_UNIX" in arguments:
            continue
        if not any(f"'{host}'" in arguments for host in LOOPBACK_HOSTS):
            remote.append(event)
    return remote


@pytest.mark.slow
def test_local_spec_runs_offline(tmp_path):
    spec_path = _local_spec(tmp_path, [SMOLLM2])

    completed, events = _run_audited(tmp_path, spec_path, {}, "data")

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "the spec names no hub source, so HF_HUB_OFFLINE=1 is set" in completed.stderr
    assert {"event": "exit", "hf_hub_offline": "1"} in events
    assert _remote_hosts(events) == []


def _files_containing(folder: Path, secrets: list[bytes]) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found.extend(f"{path}: {secret[:6]!r}..." for secret in secrets if secret in data)
    return found


def _event_log_text(home: Path) -> str:
    """Every event of every run in the instance, as the JSON Dagster stores, with error messages."""
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        records = []
        for run in instance.get_runs():
            for entry in instance.all_logs(run.run_id):
                records.append(entry.user_message or "")
                records.append(str(entry.dagster_event) if entry.dagster_event else "")
        return "\n".join(records)


@pytest.mark.slow
def test_tokens_never_reach_logs_store_or_errors(tmp_path, robustness_tally):
    """A study slice (SmolLM2 on 2 CoLA rows) and a hub model whose download fails offline."""
    hf_token = f"hf_{uuid.uuid4().hex}{uuid.uuid4().hex[:6]}"
    api_key = f"sk-{uuid.uuid4().hex}"
    spec_path = _local_spec(tmp_path, [SMOLLM2, HUB_MODEL])
    robustness_tally.fault()

    completed, events = _run_audited(
        tmp_path, spec_path, {"HF_TOKEN": hf_token, API_KEY_VARIABLE: api_key, OFFLINE_VARIABLE: "1"},
        "data", "prompted", "votes", "analysis",
    )

    output = completed.stdout + completed.stderr
    # The SmolLM2 partition succeeds; the hub model's partition fails, so the run exits with 1.
    assert completed.returncode == 1, output[-3000:]
    failed = [line.strip() for line in completed.stdout.splitlines() if line.strip().startswith("failed:")]
    assert failed == ["failed: prompted:glue_cola|hub-model__editing__r0"], output[-3000:]
    home = tmp_path / "state" / "dagster_home"
    event_log = _event_log_text(home)
    assert "download of 'model-q8_0.gguf' from 'example-org/private-model-GGUF' failed" in event_log
    assert "HF_HUB_OFFLINE is set and the file is not in the local cache" in event_log
    predictions = list((tmp_path / "state" / "results" / "prompt_predictions").glob("*.parquet"))
    assert [path.name for path in predictions] == ["glue_cola+smollm2-135m__editing__r0.parquet"]

    for secret in (hf_token, api_key):
        assert secret not in output
        assert secret not in event_log
    assert _files_containing(tmp_path / "state", [hf_token.encode(), api_key.encode()]) == []
    # The scan reads the instance's SQLite files: a string the event log does hold is found there.
    assert _files_containing(home, [b"example-org/private-model-GGUF"]) != []
    assert _remote_hosts(events) == []
