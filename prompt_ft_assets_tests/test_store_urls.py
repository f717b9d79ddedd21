"""The results store behind fsspec URLs: memory:// for a non-local root, file:// and plain folders for local ones."""

import threading
import uuid
from pathlib import Path

import duckdb
import fsspec
import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, materialize

from prompt_ft_assets.assets.data import dataset, prompt_templates
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.prompt_runner import CACHE_TABLE, read_cached_answers
from prompt_ft_assets.resources import RESULTS_ROOT_VARIABLE, ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore, StoreError, open_root


@pytest.fixture
def memory_url():
    """A memory:// root of its own, removed afterwards because fsspec's memory filesystem is process-wide."""
    name = f"results-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}/store"
    filesystem = fsspec.filesystem("memory")
    if filesystem.exists(f"/{name}"):
        filesystem.rm(f"/{name}", recursive=True)


@pytest.mark.parametrize(
    ("root", "local_path"),
    [
        ("/srv/results", Path("/srv/results")),
        (Path("relative/results"), Path("relative/results")),
        ("file:///srv/results", Path("/srv/results")),
        ("file:///srv/results/", Path("/srv/results")),
    ],
)
def test_local_roots_are_paths(root, local_path):
    filesystem, path = open_root(root)
    assert filesystem is None
    assert path == local_path
    assert type(path) is type(Path())


def test_memory_root_is_url():
    filesystem, path = open_root("memory://bucket/prefix/")
    assert filesystem.protocol == "memory" or "memory" in filesystem.protocol
    assert str(path) == "memory://bucket/prefix"


@pytest.mark.parametrize(
    ("root", "fragment"),
    [
        ("", "PROMPT_FT_RESULTS_ROOT"),
        ("   ", "PROMPT_FT_RESULTS_ROOT"),
        ("nosuchprotocol://bucket/x", "'nosuchprotocol://bucket/x' is not a usable URL"),
    ],
)
def test_bad_root_rejected(root, fragment):
    with pytest.raises(StoreError) as raised:
        ResultsStore(root)
    assert fragment in str(raised.value)


def test_root_needing_missing_package_rejected():
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed, so an s3:// root opens")
    with pytest.raises(StoreError) as raised:
        ResultsStore("s3://bucket/prefix")
    assert "'s3://bucket/prefix' needs a package that is not installed" in str(raised.value)
    assert "s3fs" in str(raised.value)


def test_memory_store_round_trip(memory_url):
    store = ResultsStore(memory_url)
    first = pd.DataFrame({"idx": [1, 2], "label": [0, 1]})
    second = pd.DataFrame({"idx": [3], "label": [1], "extra": ["only here"]})

    assert not store.is_local
    assert store.tables() == []
    assert store.read_table("prompt_predictions").empty
    assert str(store.write("prompt_predictions", "glue_cola|run_a", first)).startswith(memory_url)
    store.write("prompt_predictions", "glue_cola|run_b", second)

    assert store.exists("prompt_predictions", "glue_cola|run_a")
    assert not store.exists("prompt_predictions", "glue_cola|run_c")
    assert [path.name for path in store.files("prompt_predictions")] == ["glue_cola+run_a.parquet", "glue_cola+run_b.parquet"]
    assert store.tables() == ["prompt_predictions"]
    pd.testing.assert_frame_equal(store.read("prompt_predictions", "glue_cola|run_b"), second)
    combined = store.read_table("prompt_predictions").sort_values("idx", ignore_index=True)
    assert combined["idx"].tolist() == [1, 2, 3]
    assert combined["extra"].isna().tolist() == [True, True, False]


def test_memory_store_replace_and_delete(memory_url):
    store = ResultsStore(memory_url)
    store.write("prompt_run_metrics", "k", pd.DataFrame({"macro_f1": [0.1]}))
    store.write("prompt_run_metrics", "k", pd.DataFrame({"macro_f1": [0.7]}))

    assert store.read("prompt_run_metrics", "k")["macro_f1"].tolist() == [0.7]
    store.delete("prompt_run_metrics", "k")
    store.delete("prompt_run_metrics", "k")
    assert not store.exists("prompt_run_metrics", "k")
    assert store.tables() == []
    with pytest.raises(StoreError, match="has no partition 'k'"):
        store.read("prompt_run_metrics", "k")


def test_memory_store_skips_foreign_folders(memory_url):
    store = ResultsStore(memory_url)
    filesystem = fsspec.filesystem("memory")
    filesystem.pipe_file(f"{store.root.path}/Not_A_Table/x.parquet", b"")
    filesystem.makedirs(f"{store.root.path}/empty_table", exist_ok=True)
    store.write("examples", "glue_cola", pd.DataFrame({"idx": [0]}))

    assert store.tables() == ["examples"]


def test_duckdb_queries_memory_store(memory_url):
    store = ResultsStore(memory_url)
    store.write("examples", "glue_cola", pd.DataFrame({"idx": [1, 2, 3], "sentence": ["a", "b", "c"]}))
    store.write("prompt_predictions", "glue_cola|r0", pd.DataFrame({"idx": [2, 3], "prediction": [1, 0]}))

    joined = store.query(
        "SELECT e.sentence, p.prediction FROM examples e JOIN prompt_predictions p USING (idx) "
        "WHERE p.prediction = ? ORDER BY e.sentence",
        [1],
    )

    assert joined.to_dict("records") == [{"sentence": "b", "prediction": 1}]
    assert store.glob("examples") == f"{memory_url}/examples/*.parquet"


def test_views_database_over_memory_store(memory_url, tmp_path):
    store = ResultsStore(memory_url)
    store.write("examples", "glue_cola", pd.DataFrame({"idx": [1, 2]}))
    database = tmp_path / "results.duckdb"

    assert store.write_views_database(database) == ["examples"]
    with duckdb.connect(str(database)) as connection:
        connection.register_filesystem(fsspec.filesystem("memory"))
        assert connection.execute("SELECT count(*) FROM examples").fetchone() == (2,)
    # Without the filesystem registered, DuckDB cannot resolve the memory:// URL the view names.
    with duckdb.connect(str(database)) as connection, pytest.raises(duckdb.Error):
        connection.execute("SELECT count(*) FROM examples").fetchall()


def test_prediction_cache_read_from_memory_store(memory_url):
    store = ResultsStore(memory_url)
    model_sha256 = "ab" * 32
    early = pd.Timestamp("2026-01-01", tz="UTC")
    late = pd.Timestamp("2026-01-02", tz="UTC")
    store.write(CACHE_TABLE, f"{model_sha256[:16]}+part+000000-a",
                pd.DataFrame({"cache_key": ["k1", "k2"], "text": ["first", "second"], "created_at": [early, early]}))
    store.write(CACHE_TABLE, f"{model_sha256[:16]}+part+000008-b",
                pd.DataFrame({"cache_key": ["k1"], "text": ["duplicate"], "created_at": [late]}))
    store.write(CACHE_TABLE, f"{'cd' * 8}+part+000000-c",
                pd.DataFrame({"cache_key": ["k3"], "text": ["other model"], "created_at": [early]}))

    cached = read_cached_answers(store, model_sha256, ["k1", "k2", "k3"]).sort_values("cache_key")

    assert cached["cache_key"].tolist() == ["k1", "k2"]
    assert cached["text"].tolist() == ["first", "second"]
    assert read_cached_answers(store, "ef" * 32, ["k1"]).empty


def test_failed_put_keeps_stored_rows(memory_url, monkeypatch):
    store = ResultsStore(memory_url)
    store.write("prompt_run_metrics", "k", pd.DataFrame({"macro_f1": [0.5]}))

    def reject_put(path, value, **kwargs):
        raise PermissionError(13, "Access Denied", path)

    monkeypatch.setattr(store._filesystem, "pipe_file", reject_put)
    with pytest.raises(StoreError) as raised:
        store.write("prompt_run_metrics", "k", pd.DataFrame({"macro_f1": [0.9]}))
    monkeypatch.undo()

    message = str(raised.value)
    assert "failed to write table 'prompt_run_metrics' partition 'k'" in message
    assert "credentials" in message
    assert "Rows stored before are unchanged" in message
    assert store.read("prompt_run_metrics", "k")["macro_f1"].tolist() == [0.5]


def test_unconvertible_frame_rejected_on_memory_store(memory_url):
    store = ResultsStore(memory_url)
    with pytest.raises(StoreError, match="failed to convert table 'examples' partition 'glue_cola' to Parquet"):
        store.write("examples", "glue_cola", pd.DataFrame({"sentence": ["lone surrogate \ud800"]}))
    assert not store.exists("examples", "glue_cola")


def test_partition_lock_on_memory_store(memory_url):
    store = ResultsStore(memory_url)
    with store.partition_lock("prompt_predictions", "glue_cola|r0") as lock_path:
        assert isinstance(lock_path, Path)
        with pytest.raises(StoreError, match="already being materialized"):
            with store.partition_lock("prompt_predictions", "glue_cola|r0"):
                pass
    with store.partition_lock("prompt_predictions", "glue_cola|r0"):
        pass


def test_waiting_lock_names_holder_then_acquires(tmp_path):
    """A run-group lock taken with wait=True reports who holds it, then blocks until it is free."""
    store = ResultsStore(tmp_path / "results")
    held, release, events = threading.Event(), threading.Event(), []

    def holder():
        with store.partition_lock("prompt_run_group", "glue_cola|smollm2"):
            held.set()
            release.wait(timeout=30)
            events.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(timeout=30)
    def on_wait(message: str) -> None:
        # The holder releases the lock only after the waiter has reported that it is waiting.
        events.append(message)
        release.set()

    with store.partition_lock("prompt_run_group", "glue_cola|smollm2", wait=True, on_wait=on_wait):
        events.append("acquired")
    thread.join(timeout=30)

    assert len(events) == 3
    assert events[0].startswith("waiting for the prompt_run_group lock of 'glue_cola|smollm2', held by pid ")
    assert events[1:] == ["released", "acquired"]


def test_file_url_writes_local_files(tmp_path):
    store = ResultsStore(f"file://{tmp_path}/results")
    path = store.write("examples", "glue_cola", pd.DataFrame({"idx": [7]}))

    assert store.is_local
    assert path == tmp_path / "results" / "examples" / "glue_cola.parquet"
    assert sorted(p.name for p in (tmp_path / "results" / "examples").iterdir()) == ["glue_cola.parquet"]
    assert store.files("examples") == [path]
    assert store.read_table("examples")["idx"].tolist() == [7]


def test_files_pattern_selects_names(tmp_path, memory_url):
    for root in (tmp_path / "results", memory_url):
        store = ResultsStore(root)
        for key in ("aa+one", "aa+two", "bb+one"):
            store.write(CACHE_TABLE, key, pd.DataFrame({"cache_key": [key]}))
        assert [path.name for path in store.files(CACHE_TABLE, "aa+*.parquet")] == ["aa+one.parquet", "aa+two.parquet"]


def test_resource_reads_root_variable(monkeypatch, tmp_path, memory_url):
    monkeypatch.setenv("PROMPT_FT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv(RESULTS_ROOT_VARIABLE, raising=False)
    assert ResultsStoreResource().store().root == tmp_path / "state" / "results"

    monkeypatch.setenv(RESULTS_ROOT_VARIABLE, memory_url)
    assert ResultsStoreResource().store().url == memory_url
    assert ResultsStoreResource(root=str(tmp_path / "explicit")).store().root == tmp_path / "explicit"


def test_data_assets_write_to_memory_store(tmp_path, state_dir, memory_url, cola_dir):
    entry = {
        "id": "glue_cola",
        "source": {"local_dir": str(cola_dir), "file_columns": ["source", "label", "original_star", "sentence"]},
        "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"],
        "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": ["editing"],
        "eval_limit": 4, "train_limit": 16,
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "memory", "datasets": [entry]}))
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    result = materialize(
        [dataset, prompt_templates],
        partition_key="glue_cola",
        instance=instance,
        resources={"experiment": ExperimentResource(spec_path=str(spec_path)),
                   "results": ResultsStoreResource(root=memory_url)},
    )

    store = ResultsStore(memory_url)
    assert result.success
    assert store.tables() == ["examples", "prompt_templates"]
    examples = store.read_table("examples")
    assert len(examples) == 8551 + 1043
    assert int(examples[examples["split"] == "validation"]["in_sample"].sum()) == 4
    assert not (state_dir / "results").exists()
