"""Load a dataset's splits from a local folder or the Hugging Face hub into one frame.

The frame has one row per example: dataset, split, idx (the row's position in its split), the
text fields, label (an index into label_names), label_name, the metadata fields and `in_sample`,
which marks the rows of the stratified evaluation or train sample. Invalid files raise
DatasetError naming the file, the row and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .spec import DatasetSpec, ExperimentSpec

logger = logging.getLogger(__name__)

SPLIT_FILE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".parquet")


class DatasetError(ValueError):
    """A dataset file that cannot be used, with the file, the row and the fix."""


def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: line {line} is not valid UTF-8 (byte {data[error.start]:#04x} at offset {error.start}); "
            "re-encode the file as UTF-8"
        ) from None
    # Spreadsheet programs write a byte order mark, which would otherwise become part of the first column name.
    return text.removeprefix("\ufeff")


# Line numbers of a frame's rows in their file, kept in DataFrame.attrs so errors can point at the line.
SOURCE_LINES_ATTR = "source_lines"


def _read_delimited(path: Path, delimiter: str, columns: list[str] | None) -> pd.DataFrame:
    text = _decode_utf8(path)
    # strict=True makes a stray quote in a CSV field an error instead of text silently merged into
    # the next fields. TSV is read without quote handling because GLUE's TSV files contain raw quotes.
    reader = csv.reader(
        io.StringIO(text), delimiter=delimiter, strict=True,
        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
    )
    rows: list[list[str]] = []
    lines: list[int] = []

    while True:
        first_line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise DatasetError(
                f"{path}: line {first_line} cannot be parsed ({error}); a quote inside a field must be doubled "
                'and the field quoted, for example "say ""hi""", or the quote removed'
            ) from None
        if row:  # a blank line, such as a trailing newline, is no example
            rows.append(row)
            lines.append(first_line)
    if not rows:
        raise DatasetError(f"{path} is empty; it needs at least one example row")

    if columns is None:
        header, body, body_lines = rows[0], rows[1:], lines[1:]
    else:
        header, body, body_lines = columns, rows, lines
        if [value.strip() for value in rows[0]] == list(columns):
            raise DatasetError(
                f"{path}: line {lines[0]} repeats the column names {columns}, so the file has a header row; "
                "remove source.file_columns from the spec"
            )
    if len(set(header)) != len(header):
        raise DatasetError(f"{path}: header {header} repeats a column name")

    stray = "tab" if delimiter == "\t" else "comma or quote"
    for row, line in zip(body, body_lines):
        if len(row) != len(header):
            raise DatasetError(
                f"{path}: line {line} has {len(row)} fields but {len(header)} are expected "
                f"({', '.join(header)}); fix the row (a stray {stray}) or set source.file_columns"
            )

    frame = pd.DataFrame(body, columns=header, dtype=str)
    frame.attrs[SOURCE_LINES_ATTR] = body_lines
    return frame


def _read_jsonl(path: Path) -> pd.DataFrame:
    records: list[dict] = []
    lines: list[int] = []
    for number, line in enumerate(_decode_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}: line {number} is not valid JSON ({error.msg}); each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise DatasetError(
                f"{path}: line {number} is a JSON {type(record).__name__}, not an object; "
                'write one object per line, for example {"sentence": "...", "label": 1}'
            )
        records.append(record)
        lines.append(number)
    if not records:
        raise DatasetError(f"{path} is empty; it needs at least one example row")
    frame = pd.DataFrame.from_records(records)
    frame.attrs[SOURCE_LINES_ATTR] = lines
    return frame


def read_split_file(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one split file into a frame of its rows; invalid files raise DatasetError with the line."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return _read_delimited(path, "\t", columns)
    if suffix == ".csv":
        return _read_delimited(path, ",", columns)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError, pa.ArrowException) as error:
            raise DatasetError(f"{path} is not a readable Parquet file ({error}); write it again or convert it") from None
    raise DatasetError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SPLIT_FILE_SUFFIXES)}")


def find_split_file(folder: Path, split: str) -> Path:
    candidates = [folder / f"{split}{suffix}" for suffix in SPLIT_FILE_SUFFIXES]
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise DatasetError(f"no file for split {split!r} in {folder}; expected one of {[p.name for p in candidates]}")
    if len(found) > 1:
        raise DatasetError(f"split {split!r} has several files in {folder}: {[p.name for p in found]}; keep one")
    return found[0]


def _row_name(raw: pd.DataFrame, position: int) -> str:
    """'row 3 (line 4)' for the row at a 0-based position; the line is known for text files only."""
    lines = raw.attrs.get(SOURCE_LINES_ATTR)
    if lines is not None and position < len(lines):
        return f"row {position + 1} (line {lines[position]})"
    return f"row {position + 1}"


def _labels_to_indices(raw: pd.DataFrame, dataset: DatasetSpec, where: str) -> np.ndarray:
    names = dataset.label_names
    index_of_name = {name: i for i, name in enumerate(names)}
    values = raw[dataset.label_field]
    result = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values.tolist()):
        if pd.isna(value):
            raise DatasetError(
                f"{where}: {_row_name(raw, row)} has no {dataset.label_field!r} value; add the label or remove the row"
            )
        if isinstance(value, float) and value.is_integer():
            # A JSON-lines column with a missing value is read as float, so labels arrive as 1.0.
            value = int(value)
        text = str(value).strip()
        if text in index_of_name:
            result[row] = index_of_name[text]
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            result[row] = int(text)
        else:
            raise DatasetError(
                f"{where}: {_row_name(raw, row)} has label {value!r}, which is not in label_names {names} "
                f"nor an index 0..{len(names) - 1}; fix the row or the spec's label_names"
            )
    return result


def normalize_split(raw: pd.DataFrame, dataset: DatasetSpec, split: str, where: str) -> pd.DataFrame:
    """Check a raw split and turn it into the stored layout."""
    needed = [*dataset.text_fields, dataset.label_field, *dataset.metadata_fields]
    missing = [column for column in needed if column not in raw.columns]
    if missing:
        raise DatasetError(
            f"{where}: column(s) {missing} missing; the file has {list(raw.columns)}. "
            "Fix text_fields/label_field/metadata_fields in the spec, or source.file_columns for a file without header"
        )
    frame = pd.DataFrame({"dataset": dataset.id, "split": split, "idx": np.arange(len(raw), dtype=np.int64)})
    for field in dataset.text_fields:
        # A null in JSON lines or Parquet would otherwise become the text "None".
        texts = raw[field].astype(str).where(raw[field].notna(), "")
        empty = texts.str.strip() == ""
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DatasetError(
                f"{where}: {_row_name(raw, row)} has empty text in field {field!r}; remove or fill the row"
            )
        frame[field] = texts.to_numpy()
    for id_column in ("id", "idx", "index"):
        if id_column in raw.columns:
            duplicated = raw[id_column].duplicated()
            if duplicated.any():
                row = int(np.flatnonzero(duplicated.to_numpy())[0])
                value = raw[id_column].tolist()[row]
                first = raw[id_column].tolist().index(value)
                raise DatasetError(
                    f"{where}: {_row_name(raw, row)} repeats {id_column} {value!r} of "
                    f"{_row_name(raw, first)}; ids must be unique, so remove the duplicate row or renumber it"
                )
    frame["label"] = _labels_to_indices(raw, dataset, where)
    frame["label_name"] = [dataset.label_names[i] for i in frame["label"]]
    for field in dataset.metadata_fields:
        frame[field] = raw[field].astype(str).to_numpy()
    return frame


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted row positions of a stratified sample: each class keeps its share, rounded, drawn with seed."""
    labels = np.asarray(labels)
    if size >= labels.size:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts * size / labels.size).astype(int)
    # Give the rows left by rounding down to the classes with the largest remainders.
    remainders = counts * size / labels.size - quotas
    for position in np.argsort(-remainders, kind="stable")[: size - quotas.sum()]:
        quotas[position] += 1
    chosen = [rng.choice(np.flatnonzero(labels == label), quota, replace=False) for label, quota in zip(classes, quotas)]
    return np.sort(np.concatenate(chosen))


def _load_from_hub(dataset: DatasetSpec, split: str) -> pd.DataFrame:
    from datasets import load_dataset  # imported here: the hub path is optional and slow to import

    logger.info("loading %s/%s split %s from the Hugging Face hub", dataset.source.hf_id, dataset.source.hf_config, split)
    return load_dataset(dataset.source.hf_id, dataset.source.hf_config, split=split).to_pandas()


def load_dataset_frame(spec: ExperimentSpec, dataset: DatasetSpec) -> pd.DataFrame:
    """Both splits of a dataset, checked and with the evaluation and train samples marked."""
    folder = spec.resolve_path(dataset.source.local_dir) if dataset.source.local_dir else None
    if folder is not None and not folder.is_dir() and dataset.source.hf_id is None:
        raise DatasetError(f"dataset {dataset.id!r}: local_dir {folder} not found and no hf_id is configured")
    frames = []
    for split, limit, seed in (
        (dataset.train_split, dataset.train_limit, dataset.train_seed),
        (dataset.eval_split, dataset.eval_limit, dataset.eval_seed),
    ):
        if folder is not None and folder.is_dir():
            path = find_split_file(folder, split)
            frame = normalize_split(read_split_file(path, dataset.source.file_columns), dataset, split, str(path))
        else:
            frame = normalize_split(_load_from_hub(dataset, split), dataset, split, f"{dataset.source.hf_id}:{split}")
        sample = stratified_sample(frame["label"].to_numpy(), limit, seed) if limit else np.arange(len(frame))
        frame["in_sample"] = False
        frame.loc[sample, "in_sample"] = True
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
