"""CSV the pages hand out: cells a spreadsheet shows as text, and rows streamed one line at a
time (a year of problems or audit entries never sits in memory)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["csv_stream", "text_cell"]

# A spreadsheet runs a cell that starts with one of these as a formula (or strips it); names
# come from hosting servers and can start with anything.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: Any) -> str:
    """``value`` as a cell a spreadsheet shows as text (a leading apostrophe before =, +, -, @,
    tab or CR); None is empty."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in _FORMULA_START else text


def csv_stream(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The header line, then one CSV line (CRLF) per row, as the rows come."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(header)
    yield flush()
    for row in rows:
        writer.writerow(row)
        yield flush()
