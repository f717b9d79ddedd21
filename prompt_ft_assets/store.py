"""The results store: one Parquet file per table and partition, read through DuckDB views.

The root is a local folder or an fsspec URL: `file:///srv/results`, `memory://name` in tests, or
an object store such as `s3://bucket/prefix` when that protocol's fsspec package is installed.
With a shared root, workers on several machines write to one store and analysis reads all of it.

Writers never open a DuckDB database. Each partition's rows go to their own file: in a local
folder through a temporary name renamed into place, on an object store as one put. Parallel
partitions therefore never contend for DuckDB's single writer lock, a reader holding the views
database open blocks nobody, and a killed writer leaves either the old file or the new one,
never half of one. Readers query `read_parquet` globs through DuckDB; for URL roots the store's
fsspec filesystem is registered on the DuckDB connection.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Union

import duckdb
import fsspec
import pandas as pd
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem
from upath import UPath

logger = logging.getLogger(__name__)

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\-+=]")

# A local folder gives pathlib paths; a URL root gives universal-pathlib paths with the same API.
StorePath = Union[Path, UPath]


class StoreError(RuntimeError):
    """A results-store operation that failed, with the path and what to do."""


# Folder under the store root with one advisory lock file per (asset, partition); the leading dot
# keeps it out of tables().
LOCKS_DIR = ".locks"


def _os_error_hint(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "the disk is full; free space and materialize the partition again"
    if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return "the folder is not writable; fix its permissions or set PROMPT_FT_STATE_DIR to a writable folder"
    return "check the folder and materialize the partition again"


def _discard(temporary: Path) -> None:
    """Delete a temporary file after a failed write; the write's own error is the one to report."""
    try:
        temporary.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("could not delete the temporary file %s: %s", temporary, error)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_orphaned_temporaries(target: Path) -> None:
    """Delete temporary files of target left by writers that were killed; live writers' files stay."""
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        pid = leftover.name.removeprefix(f".{target.name}.").split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            _discard(leftover)
            logger.info("removed %s, left by a killed writer", leftover)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write a text file through a temporary file and a rename, so a killed writer leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        _discard(temporary)
        raise
    _remove_orphaned_temporaries(path)
    return path


def partition_file_name(partition_key: str) -> str:
    """Turn a partition key such as 'glue_cola|smollm2__editing__r0' into a file name."""
    name = partition_key.replace("|", "+")
    if _UNSAFE_KEY_CHARS.search(name) or name in ("", ".", ".."):
        raise StoreError(f"partition key {partition_key!r} contains characters that cannot be part of a file name")
    return name + ".parquet"


def _sql_string(text: str) -> str:
    """Quote text as a SQL string literal, because view definitions cannot take bound parameters."""
    return "'" + text.replace("'", "''") + "'"


# Listings are never cached, because other workers add files to the store while this process runs.
_STORAGE_OPTIONS = {"use_listings_cache": False}


def open_root(root: str | Path) -> tuple[fsspec.AbstractFileSystem | None, StorePath]:
    """Parse a results root into (fsspec filesystem, root path); the filesystem is None for a local folder.

    `file://` URLs are local folders, so they keep the temporary-file-and-rename write.
    """
    if isinstance(root, Path):
        return None, root
    text = str(root).strip()
    if not text:
        raise StoreError("the results root is empty; set PROMPT_FT_RESULTS_ROOT to a folder or a URL such as s3://bucket/prefix")
    if "://" not in text and "::" not in text:
        return None, Path(text)
    try:
        filesystem, path = fsspec.core.url_to_fs(text, **_STORAGE_OPTIONS)
    except ImportError as error:
        raise StoreError(
            f"results root {text!r} needs a package that is not installed: {error}. Install it in every worker's "
            "environment, or use a local folder"
        ) from error
    except ValueError as error:
        raise StoreError(
            f"results root {text!r} is not a usable URL: {error}. Use a folder, file:///path, or an fsspec URL such "
            "as s3://bucket/prefix"
        ) from error
    if isinstance(filesystem, LocalFileSystem):
        return None, Path(path)
    path = path.rstrip("/") or path
    return filesystem, UPath(filesystem.unstrip_protocol(path), **_STORAGE_OPTIONS)


class ResultsStore:
    """Parquet files under `<root>/<table>/<partition>.parquet`, on a local disk or behind an fsspec URL."""

    def __init__(self, root: str | Path):
        self.url = str(root)
        self._filesystem, self.root = open_root(root)

    def __repr__(self) -> str:
        return f"ResultsStore({self.url!r})"

    @property
    def is_local(self) -> bool:
        """True when the root is a folder on this machine (a plain path or a file:// URL)."""
        return self._filesystem is None

    def _remote_path(self, path: StorePath) -> str:
        """Return the path without its protocol, as the fsspec filesystem takes it."""
        return path.path

    def table_dir(self, table: str) -> StorePath:
        if not _TABLE_NAME.match(table):
            raise StoreError(f"table name {table!r} is invalid: use lowercase letters, digits and '_'")
        return self.root / table

    def path(self, table: str, key: str) -> StorePath:
        return self.table_dir(table) / partition_file_name(key)

    def exists(self, table: str, key: str) -> bool:
        path = self.path(table, key)
        if self.is_local:
            return path.is_file()
        return self._filesystem.isfile(self._remote_path(path))

    def write(self, table: str, key: str, frame: pd.DataFrame) -> StorePath:
        """Replace the rows of one partition of a table, atomically."""
        if len(frame.columns) == 0:
            raise StoreError(f"table {table!r} partition {key!r}: a frame without columns cannot be stored as Parquet")
        target = self.path(table, key)
        if not self.is_local:
            return self._put(table, key, frame, target)
        temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(temporary, index=False)
            os.replace(temporary, target)
        except OSError as error:
            _discard(temporary)
            raise StoreError(
                f"failed to write table {table!r} partition {key!r} to {target}: {error.strerror or error}; "
                f"{_os_error_hint(error)}. Rows stored before are unchanged."
            ) from error
        except (ValueError, TypeError, pa.ArrowException) as error:
            # pyarrow rejects a column it cannot convert, for example text with a lone UTF-16 surrogate.
            _discard(temporary)
            raise _conversion_error(table, key, error) from error
        except BaseException:
            _discard(temporary)
            raise
        _remove_orphaned_temporaries(target)
        logger.debug("wrote %d rows to %s", len(frame), target)
        return target

    def _put(self, table: str, key: str, frame: pd.DataFrame, target: UPath) -> UPath:
        """Upload one partition as a single object, which object stores replace atomically."""
        buffer = io.BytesIO()
        try:
            frame.to_parquet(buffer, index=False)
        except (ValueError, TypeError, pa.ArrowException) as error:
            raise _conversion_error(table, key, error) from error
        # NOTE: the put is atomic on object stores (S3, GCS, Azure) and in memory://. Other fsspec
        # filesystems (sftp, hdfs) may expose a half-written file to readers while it uploads.
        try:
            self._filesystem.makedirs(self._remote_path(target.parent), exist_ok=True)
            self._filesystem.pipe_file(self._remote_path(target), buffer.getvalue())
        except OSError as error:
            raise StoreError(
                f"failed to write table {table!r} partition {key!r} to {target}: {error}; check that the URL exists "
                "and this worker's credentials may write to it, then materialize the partition again. "
                "Rows stored before are unchanged."
            ) from error
        logger.debug("wrote %d rows to %s", len(frame), target)
        return target

    @contextlib.contextmanager
    def partition_lock(
        self, name: str, key: str, wait: bool = False, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[Path]:
        """Hold an exclusive advisory lock on one partition of an asset while the block runs.

        A second process that asks for the same lock gets a StoreError at once, naming the
        process that holds it. With wait=True it blocks until the holder releases the lock, after
        passing on_wait a message that names the holder. The kernel drops the lock when its holder
        exits, so a killed run never leaves a stale lock behind.
        """
        path = self._locks_dir() / name / (partition_file_name(key).removesuffix(".parquet") + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a+", encoding="utf-8")
        except OSError as error:
            raise StoreError(
                f"failed to create the lock file {path} for {name} partition {key!r}: {error.strerror or error}; "
                f"{_os_error_hint(error)}"
            ) from error
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if not wait:
                    raise StoreError(
                        f"{name} partition {key!r} is already being materialized ({holder}); wait for that run to "
                        "finish, then materialize the partition again if it failed"
                    ) from None
                if on_wait is not None:
                    on_wait(f"waiting for the {name} lock of {key!r}, held by {holder}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            yield path

    def _locks_dir(self) -> Path:
        if self.is_local:
            return self.root / LOCKS_DIR
        # NOTE: object stores have no advisory locks, so for a URL root the lock only excludes
        # processes on this machine. Across machines, the run queue's one-run-per-partition limit
        # in deploy/dagster.postgres.yaml keeps two runs of one partition apart.
        digest = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "prompt-ft-locks" / digest

    def read(self, table: str, key: str) -> pd.DataFrame:
        """Read the rows of one partition, with the dtypes pandas wrote."""
        path = self.path(table, key)
        if not self.exists(table, key):
            raise StoreError(f"table {table!r} has no partition {key!r} ({path}); materialize it first")
        if self.is_local:
            return pd.read_parquet(path)
        with self._filesystem.open(self._remote_path(path), "rb") as handle:
            return pd.read_parquet(handle)

    def delete(self, table: str, key: str) -> None:
        path = self.path(table, key)
        if self.is_local:
            path.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._filesystem.rm_file(self._remote_path(path))

    def files(self, table: str, pattern: str = "*.parquet") -> list[StorePath]:
        """List the table's files whose names match the glob pattern, sorted by name."""
        folder = self.table_dir(table)
        if self.is_local:
            return sorted(folder.glob(pattern)) if folder.is_dir() else []
        matches = self._filesystem.glob(f"{self._remote_path(folder)}/{pattern}")
        return [folder / match.rsplit("/", 1)[-1] for match in sorted(matches)]

    def tables(self) -> list[str]:
        if self.is_local:
            if not self.root.is_dir():
                return []
            names = [p.name for p in self.root.iterdir() if p.is_dir()]
        else:
            try:
                entries = self._filesystem.ls(self._remote_path(self.root), detail=True)
            except FileNotFoundError:
                return []
            names = [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry["type"] == "directory"]
        return sorted(name for name in names if _TABLE_NAME.match(name) and self.files(name))

    def glob(self, table: str, pattern: str = "*.parquet") -> str:
        """Return the `read_parquet` path of the table's files: an absolute path, or a URL for a URL root."""
        folder = self.table_dir(table)
        if self.is_local:
            return str(folder.resolve() / pattern)
        return str(folder / pattern)

    def _register(self, connection: duckdb.DuckDBPyConnection) -> None:
        if not self.is_local:
            connection.register_filesystem(self._filesystem)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """Open an in-memory DuckDB connection with one view per table that has files.

        For a URL root the store's filesystem is registered on the connection, so further
        `read_parquet` calls on store URLs through it work too.
        """
        connection = duckdb.connect()
        self._register(connection)
        for table in self.tables():
            connection.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_sql_string(self.glob(table))}, union_by_name = true)"
            )
        return connection

    def query(self, sql: str, parameters: list | None = None) -> pd.DataFrame:
        with self.connect() as connection:
            return connection.execute(sql, parameters or []).df()

    def read_table(self, table: str) -> pd.DataFrame:
        """All partitions of a table; an empty frame when nothing is stored yet."""
        if not self.files(table):
            return pd.DataFrame()
        return self.query(f"SELECT * FROM {table}")

    def write_views_database(self, database: Path) -> list[str]:
        """Create or refresh a DuckDB file whose views read this store, for notebooks and the CLI.

        Skipped with a warning while another process holds the file, because a reader must never
        make a materialization fail. For a URL root the views name URLs: a reader must register
        the same fsspec filesystem on its connection (or use `connect()`) before querying them.
        """
        tables = self.tables()
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            with duckdb.connect(str(database)) as connection:
                self._register(connection)
                for table in tables:
                    connection.execute(
                        f"CREATE OR REPLACE VIEW {table} AS "
                        f"SELECT * FROM read_parquet({_sql_string(self.glob(table))}, union_by_name = true)"
                    )
        except duckdb.IOException as error:
            logger.warning("views database %s not refreshed because it is in use: %s", database, error)
        return tables


def _conversion_error(table: str, key: str, error: Exception) -> StoreError:
    return StoreError(
        f"failed to convert table {table!r} partition {key!r} to Parquet: {type(error).__name__}: {error}. "
        "Rows stored before are unchanged."
    )
