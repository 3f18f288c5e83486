"""Data rows of a data-driven launch: read from an uploaded file, checked before anything starts.

Pure functions. Rows are numbered from 1 in the order given (a CSV file's header is not a row;
a JSON-lines file's blank lines are not rows), and every problem names its row.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from runs.storable import has_unstorable_text

CSV = "csv"
JSON_LINES = "jsonl"
_KINDS_BY_SUFFIX = {".csv": CSV, ".jsonl": JSON_LINES, ".ndjson": JSON_LINES}
_KINDS_BY_TYPE = {
    "text/csv": CSV,
    "application/jsonl": JSON_LINES,
    "application/x-ndjson": JSON_LINES,
    "application/x-jsonlines": JSON_LINES,
}


class RowProblem(ValueError):
    """Row ``row`` (1-based; 0: the file as a whole) cannot be used."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(f"row {row}: {message}" if row else message)
        self.row = row
        self.message = message


def file_kind(filename: str, content_type: str) -> str:
    """CSV or JSON lines, from the file's name, else its content type."""
    name = filename.lower()
    for suffix, kind in _KINDS_BY_SUFFIX.items():
        if name.endswith(suffix):
            return kind
    kind = _KINDS_BY_TYPE.get((content_type or "").split(";")[0].strip().lower())
    if kind is None:
        raise RowProblem(0, "a data file is .csv, .jsonl or .ndjson (or sent as text/csv)")
    return kind


def read_rows(content: bytes, kind: str) -> list[Any]:
    """The rows of a CSV file (an object per line, keyed by the header; values are text) or of
    a JSON-lines file (one JSON value per non-blank line)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RowProblem(
            0, f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    if kind == CSV:
        return _csv_rows(text)
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise RowProblem(len(rows) + 1, f"not JSON: {exc}") from None
    return rows


def _csv_rows(text: str) -> list[dict[str, str]]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        lines = [line for line in reader if line]
    except csv.Error as exc:
        raise RowProblem(0, f"not CSV: {exc}") from None
    if not lines:
        raise RowProblem(0, "the CSV file has no header line")
    header, *records = lines
    if any(not name.strip() for name in header) or len(set(header)) != len(header):
        raise RowProblem(0, "the CSV header needs distinct, non-blank column names")
    rows = []
    for number, record in enumerate(records, start=1):
        if len(record) != len(header):
            raise RowProblem(number, f"has {len(record)} fields, the header {len(header)}")
        rows.append(dict(zip(header, record, strict=True)))
    return rows


def check_rows(rows: Any, *, max_bytes: int, max_rows: int) -> list[RowProblem]:
    """Every problem of ``rows`` (a list of payload objects, each at most ``max_bytes`` as
    JSON), at most one per row; empty when all of them can start."""
    if not isinstance(rows, list):
        return [RowProblem(0, "must be a list of JSON objects")]
    if not rows:
        return [RowProblem(0, "holds no rows")]
    if len(rows) > max_rows:
        return [RowProblem(0, f"holds {len(rows)} rows; at most {max_rows} may start at once")]
    problems = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            problems.append(RowProblem(number, f"must be a JSON object, not {_kind(row)}"))
        elif has_unstorable_text(row):
            problems.append(RowProblem(number, "text must not hold NUL or unpaired surrogates"))
        elif len(json.dumps(row)) > max_bytes:
            problems.append(RowProblem(number, f"is larger than {max_bytes} bytes as JSON"))
    return problems


def _kind(value: Any) -> str:
    return {list: "a list", str: "a text", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
