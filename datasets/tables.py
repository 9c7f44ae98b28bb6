"""Rows of the small text tables people bring (box CSVs, landmark files)."""

from __future__ import annotations

import csv
import io
from typing import Iterator


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def table_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, stripped fields)`` of each content row of a CSV or TSV text.

    Tab-separated when the first non-blank line has a tab. Blank rows, ``#``
    comments, trailing delimiters and a header (the first content row with no
    number after the name) are skipped. Line numbers are physical lines, also
    after quoted newlines, so people can find a reported row.
    """
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in first else ",")
    seen_content = False
    for row in reader:
        fields = [f.strip() for f in row]
        while fields and not fields[-1]:
            fields.pop()  # a trailing delimiter is not a field
        if not fields or fields[0].startswith("#"):
            continue
        header = not seen_content and not any(map(_is_number, fields[1:]))
        seen_content = True
        if not header:
            yield reader.line_num, fields
