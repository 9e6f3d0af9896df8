"""Load (input_len, output_len) request records from a JSONL or CSV file.

Formats (docs/planning.md):

* JSONL (``.jsonl`` / ``.json``): one object per line with integer fields ``input_len`` and
  ``output_len`` (``input_tokens`` / ``output_tokens`` are accepted as aliases); other fields are
  ignored; blank lines are skipped.
* CSV (``.csv``): a header row naming ``input_len`` and ``output_len`` (or the aliases).

Errors are :class:`~cluster.exceptions.InputError` naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from cluster.exceptions import InputError

FIELDS = (("input_len", "input_tokens"), ("output_len", "output_tokens"))
FORMATS = (".jsonl", ".json", ".csv")



def jsonl_objects(text: str, where: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSON-lines text; a line that is not a
    JSON object is an :class:`InputError` naming ``where:line``."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{where}:{n}: expected a JSON object, got {type(rec).__name__}")
        yield n, rec

def _length(value: Any, where: str, field: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InputError(f"{where}: field {field!r} = {value!r}; allowed: an integer >= 1") from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{where}: field {field!r} = {value!r}; allowed: an integer >= 1")
    return value


def _pick(rec: dict, where: str) -> tuple[int, int]:
    out = []
    for name, alias in FIELDS:
        key = name if name in rec else alias if alias in rec else None
        if key is None:
            raise InputError(f"{where}: missing field {name!r} (or {alias!r})")
        out.append(_length(rec[key], where, key))
    return out[0], out[1]


def load_requests(path: str | Path) -> list[tuple[int, int]]:
    """The (input_len, output_len) records of a JSONL or CSV file, in file order."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"workload file {str(p)!r}: unknown format {suffix!r}; allowed: {list(FORMATS)}")
    try:
        text = p.read_text()
    except OSError as e:
        raise InputError(f"workload file {str(p)!r}: cannot read it ({e.strerror})") from None
    records: list[tuple[int, int]] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        names = reader.fieldnames or []
        for name, alias in FIELDS:
            if name not in names and alias not in names:
                raise InputError(f"{p}:1: header {names} has no column {name!r} (or {alias!r})")
        for row in reader:
            records.append(_pick(row, f"{p}:{reader.line_num}"))
    else:
        for n, rec in jsonl_objects(text, str(p)):
            records.append(_pick(rec, f"{p}:{n}"))
    if not records:
        raise InputError(f"workload file {str(p)!r} has no records")
    return records


__all__ = ["FORMATS", "load_requests"]
