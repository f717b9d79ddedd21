"""The results store: one Parquet file per table and partition, read through DuckDB views.

Writers never open a DuckDB database. Each partition's rows go to their own file, written to a
temporary name and renamed into place, so parallel partitions never contend for DuckDB's single
writer lock, a reader holding the views database open blocks nobody, and a killed writer leaves
either the old file or the new one, never half of one. Readers query `read_parquet` globs.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import uuid
from pathlib import Path

import duckdb
import pandas as pd

logger = logging.getLogger(__name__)

_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\-+=]")


class StoreError(RuntimeError):
    """A results-store operation that failed, with the path and what to do."""


def partition_file_name(partition_key: str) -> str:
    """Turn a partition key such as 'glue_cola|smollm2__editing__r0' into a file name."""
    name = partition_key.replace("|", "+")
    if _UNSAFE_KEY_CHARS.search(name) or name in ("", ".", ".."):
        raise StoreError(f"partition key {partition_key!r} contains characters that cannot be part of a file name")
    return name + ".parquet"


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table_dir(self, table: str) -> Path:
        if not _TABLE_NAME.match(table):
            raise StoreError(f"table name {table!r} is invalid: use lowercase letters, digits and '_'")
        return self.root / table

    def path(self, table: str, key: str) -> Path:
        return self.table_dir(table) / partition_file_name(key)

    def exists(self, table: str, key: str) -> bool:
        return self.path(table, key).is_file()

    def write(self, table: str, key: str, frame: pd.DataFrame) -> Path:
        """Replace the rows of one partition of a table, atomically."""
        target = self.path(table, key)
        temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(temporary, index=False)
            os.replace(temporary, target)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if error.errno == errno.ENOSPC:
                hint = "the disk is full; free space and materialize the partition again"
            elif error.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                hint = f"the folder is not writable; fix its permissions or set PROMPT_FT_STATE_DIR"
            else:
                hint = "check the folder and materialize the partition again"
            raise StoreError(
                f"failed to write table {table!r} partition {key!r} to {target}: {error.strerror or error}; {hint}. "
                "Rows stored before are unchanged."
            ) from error
        logger.debug("wrote %d rows to %s", len(frame), target)
        return target

    def read(self, table: str, key: str) -> pd.DataFrame:
        path = self.path(table, key)
        if not path.is_file():
            raise StoreError(f"table {table!r} has no partition {key!r} ({path}); materialize it first")
        return pd.read_parquet(path)

    def delete(self, table: str, key: str) -> None:
        self.path(table, key).unlink(missing_ok=True)

    def files(self, table: str) -> list[Path]:
        folder = self.table_dir(table)
        return sorted(folder.glob("*.parquet")) if folder.is_dir() else []

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _TABLE_NAME.match(p.name) and self.files(p.name))

    def glob(self, table: str) -> str:
        return str(self.table_dir(table).resolve() / "*.parquet")

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per table that has files."""
        connection = duckdb.connect()
        for table in self.tables():
            connection.execute(
                f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{self.glob(table)}', union_by_name = true)"
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
        make a materialization fail.
        """
        tables = self.tables()
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
            with duckdb.connect(str(database)) as connection:
                for table in tables:
                    connection.execute(
                        f"CREATE OR REPLACE VIEW {table} AS "
                        f"SELECT * FROM read_parquet('{self.glob(table)}', union_by_name = true)"
                    )
        except duckdb.IOException as error:
            logger.warning("views database %s not refreshed because it is in use: %s", database, error)
        return tables
