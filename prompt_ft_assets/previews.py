"""Markdown previews for asset metadata."""

from __future__ import annotations

import pandas as pd

PREVIEW_ROWS = 10
PREVIEW_TEXT_CHARS = 80


def markdown_preview(frame: pd.DataFrame, rows: int = PREVIEW_ROWS) -> str:
    """The first rows of a frame as a markdown table, with long texts shortened."""
    if frame.empty:
        return "_no rows_"
    shown = frame.head(rows).copy()
    for column in shown.columns:
        if shown[column].dtype == object:
            shown[column] = shown[column].map(
                lambda value: value if not isinstance(value, str) or len(value) <= PREVIEW_TEXT_CHARS
                else value[: PREVIEW_TEXT_CHARS - 1] + "…"
            )
    return shown.to_markdown(index=False, floatfmt=".4f")
