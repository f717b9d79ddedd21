"""A full disk and a read-only results folder: a clear error, and no half-written or lost table.

The store is put on a real tmpfs: a small one fills up, and a remount makes one read-only. Tests
run as root in CI, where chmod does not stop writes, so a read-only mount is the real case.
Mounting needs root and CAP_SYS_ADMIN; without them those tests are skipped with the reason, and
the store's error mapping is still checked through a root folder whose parent is a regular file.
"""

import os
import shutil
import subprocess

import pandas as pd
import pytest
import yaml
from dagster import DagsterInstance, materialize

from prompt_ft_assets.assets.data import dataset
from prompt_ft_assets.partitions import sync_partitions
from prompt_ft_assets.resources import ExperimentResource, ResultsStoreResource
from prompt_ft_assets.spec import load_spec
from prompt_ft_assets.store import ResultsStore, StoreError

from .test_bad_input_datasets import COLA_COLUMNS, SLICE_ROWS, _cola_slice, failure_messages

# Room for a slice of CoLA (about 8 KB as Parquet) but not for all of it (about 280 KB).
FULL_DISK_SIZE = "128k"
ROOMY_DISK_SIZE = "16m"


def _mount_tmpfs(target, options: str):
    """Mount a tmpfs at target; skip the test with the reason when this machine does not allow it."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine, so no tmpfs can be made")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run as root (as CI does) to test a full or read-only disk")
    target.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if completed.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({completed.stderr.strip()}); needs CAP_SYS_ADMIN")


def _remount(target, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A function that mounts a tmpfs under tmp_path; every mount is removed after the test."""
    mounted = []

    def mount(name: str, options: str):
        target = tmp_path / name
        _mount_tmpfs(target, options)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False, capture_output=True)


def _spec(folder, data_folder):
    entry = {
        "id": "toy",
        "source": {"local_dir": str(data_folder), "file_columns": COLA_COLUMNS},
        "text_fields": ["sentence"], "label_names": ["unacceptable", "acceptable"], "metadata_fields": ["source"],
        "promptsource": {"dataset": "glue", "subset": "cola"}, "templates": ["editing"],
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "disk", "datasets": [entry]}))
    return path


def _materialize(spec_path, results_root, instance):
    return materialize(
        [dataset], partition_key="toy", instance=instance, raise_on_error=False,
        resources={"experiment": ExperimentResource(spec_path=str(spec_path)),
                   "results": ResultsStoreResource(root=str(results_root))},
    )


@pytest.fixture
def slice_spec(tmp_path, cola_dir):
    spec_path = _spec(tmp_path, _cola_slice(cola_dir, tmp_path / "cola_slice"))
    instance = DagsterInstance.ephemeral()
    sync_partitions(instance, load_spec(spec_path))
    return spec_path, instance


def _temporaries(root):
    return [path for path in root.rglob("*") if path.name.endswith(".tmp")]


def test_full_disk_keeps_stored_examples(tmpfs, slice_spec, cola_dir, robustness_tally):
    spec_path, instance = slice_spec
    disk = tmpfs("full_disk", f"size={FULL_DISK_SIZE}")
    results_root = disk / "results"
    assert _materialize(spec_path, results_root, instance).success
    stored = ResultsStore(results_root).path("examples", "toy")
    before = stored.read_bytes()

    # The whole of CoLA does not fit on the small disk.
    spec = yaml.safe_load(spec_path.read_text())
    spec["datasets"][0]["source"]["local_dir"] = str(cola_dir)
    spec_path.write_text(yaml.safe_dump(spec))
    robustness_tally.fault()
    result = _materialize(spec_path, results_root, instance)

    assert not result.success
    message = failure_messages(result)
    assert "failed to write table 'examples' partition 'toy'" in message
    assert "No space left on device" in message
    assert "the disk is full; free space and materialize the partition again" in message
    assert "Rows stored before are unchanged" in message
    assert stored.read_bytes() == before
    assert _temporaries(disk) == []
    kept = ResultsStore(results_root).read_table("examples")
    robustness_tally.rows(expected=2 * SLICE_ROWS, stored=len(kept))
    assert len(kept) == 2 * SLICE_ROWS


def test_read_only_results_folder(tmpfs, slice_spec, robustness_tally):
    spec_path, instance = slice_spec
    disk = tmpfs("read_only", f"size={ROOMY_DISK_SIZE}")
    results_root = disk / "results"
    assert _materialize(spec_path, results_root, instance).success
    store = ResultsStore(results_root)
    stored = store.path("examples", "toy")
    before = stored.read_bytes()
    _remount(disk, "ro")
    robustness_tally.fault()

    result = _materialize(spec_path, results_root, instance)

    assert not result.success
    message = failure_messages(result)
    assert "Read-only file system" in message
    assert "the folder is not writable; fix its permissions or set PROMPT_FT_STATE_DIR to a writable folder" in message
    assert stored.read_bytes() == before

    with pytest.raises(StoreError) as raised:
        store.write("examples", "other", pd.DataFrame({"idx": [1]}))
    assert "failed to write table 'examples' partition 'other'" in str(raised.value)
    assert "the folder is not writable" in str(raised.value)
    _remount(disk, "rw")
    assert _temporaries(disk) == []
    robustness_tally.rows(expected=2 * SLICE_ROWS, stored=len(store.read("examples", "toy")))


def test_results_root_under_a_file(tmp_path, robustness_tally):
    """Runs everywhere, mount or not: a root that cannot be a folder gives a StoreError."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a regular file where a folder is expected\n")
    store = ResultsStore(blocker / "results")
    robustness_tally.fault()

    with pytest.raises(StoreError) as raised:
        store.write("examples", "toy", pd.DataFrame({"idx": [1, 2]}))

    message = str(raised.value)
    assert "failed to write table 'examples' partition 'toy'" in message
    assert "Not a directory" in message
    assert "check the folder and materialize the partition again" in message
    with pytest.raises(StoreError, match="failed to create the lock file"):
        with store.partition_lock("dataset", "toy"):
            pass


def test_unstorable_frame_leaves_no_temporary(tmp_path, robustness_tally):
    store = ResultsStore(tmp_path / "results")
    store.write("examples", "toy", pd.DataFrame({"text": ["fine"]}))
    before = store.path("examples", "toy").read_bytes()
    robustness_tally.bad_input()

    with pytest.raises(StoreError, match="failed to convert table 'examples' partition 'toy' to Parquet"):
        store.write("examples", "toy", pd.DataFrame({"text": ["lone surrogate \ud800"]}))

    assert store.path("examples", "toy").read_bytes() == before
    assert _temporaries(tmp_path) == []
