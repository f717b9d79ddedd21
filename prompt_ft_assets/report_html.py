"""HTML building blocks of the report: escaped tables, embedded PNG figures and the page shell.

The page is self-contained so it opens offline and can be mailed as one file: CSS sits in a
<style> element, figures are base64 data URIs, and nothing links outside the page. Every stored
string goes through html.escape, so a template name or model output cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MISSING = "\u2014"  # em dash for a value that is not defined, such as an interval over one run
# Columns that hold p-values are printed with significant digits, so small values stay readable.
P_VALUE_COLUMNS = frozenset({"p_value", "bootstrap_p", "mcnemar_p"})

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232b; background: #f7f8fa; }
main { max-width: 1400px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #dde3ea; padding-bottom: 4px; margin-top: 2.4rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
p.meta, p.note { color: #4a5563; font-size: 0.9rem; }
nav ol { columns: 2; font-size: 0.92rem; }
table { border-collapse: collapse; font-size: 0.84rem; margin: 8px 0 14px; }
th, td { border: 1px solid #d4dae1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
.scroll { overflow-x: auto; }
figure { margin: 8px 0 18px; }
figure img { max-width: 100%; border: 1px solid #e2e6eb; }
figcaption { font-size: 0.85rem; color: #4a5563; }
pre { background: #f3f5f7; padding: 10px; overflow-x: auto; font-size: 0.8rem; }
.empty { color: #6b7480; font-style: italic; }
"""


@dataclass(frozen=True)
class Section:
    """One titled part of the page; body is HTML built from escaped parts."""

    anchor: str
    title: str
    body: str


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def format_cell(value: object, column: str) -> tuple[str, bool]:
    """Format one table cell; return the escaped text and whether it is a number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING, False
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        if column in P_VALUE_COLUMNS:
            return f"{float(value):.3g}", True
        return f"{float(value):.4f}", True
    return escape(value), False


def paragraph(text: str, css_class: str = "note") -> str:
    return f'<p class="{css_class}">{escape(text)}</p>'


def table_html(frame: pd.DataFrame, empty: str = "no rows stored yet") -> str:
    """Render every row and column of the frame as an HTML table, each cell escaped."""
    if frame is None or frame.empty:
        return f'<p class="empty">{escape(empty)}</p>'
    header = "".join(f"<th>{escape(column)}</th>" for column in frame.columns)
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = []
        for column, value in zip(frame.columns, values):
            text, numeric = format_cell(value, str(column))
            cells.append(f'<td class="number">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def figure_html(png: bytes | None, caption: str) -> str:
    """Embed a PNG as a data URI, or write a note when the figure was not drawn."""
    if png is None:
        return f'<p class="empty">figure not drawn yet: {escape(caption)}</p>'
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def page_html(title: str, meta_lines: list[str], sections: list[Section]) -> str:
    """Assemble the page: a title, lines about the run, a table of contents and the sections."""
    contents = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{escape(s.anchor)}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    meta = "".join(paragraph(line, "meta") for line in meta_lines)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{meta}<nav><ol>{contents}</ol></nav>{body}</main></body></html>\n"
    )
