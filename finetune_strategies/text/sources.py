"""Where texts come from, checked when the data module is built: Python lists, CSV files and JSON lines.

Every source becomes a :class:`TextSplit`: the texts, and their raw targets (class names or indices)
for a labelled split. A CSV file has a header row naming its columns; a JSON-lines file (``.jsonl``,
``.ndjson``) has one JSON object per line (blank lines are skipped). In a CSV file every value is text,
so a label column whose values are all whole numbers (``0``, ``1``, ...) holds class indices; any other
holds class names.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_strategies.errors import MissingPathError, TextDataError
from finetune_strategies.tasks.targets import listing
from finetune_strategies.validation import did_you_mean

CSV_SUFFIXES = (".csv", ".tsv")
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_WHOLE_NUMBER = re.compile(r"\d+")


@dataclass
class TextSplit:
    """The texts of one split and, if labelled, their targets (raw until the data module encodes them)."""

    texts: list[str]
    targets: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextSplit:
        targets = None if self.targets is None else [self.targets[i] for i in indices]
        return TextSplit([self.texts[i] for i in indices], targets)


def check_texts(what: str, texts: Any) -> list[str]:
    """``texts`` as a list of non-empty strings, or a :class:`TextDataError` naming the first bad one."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TextDataError(f"`{what}` must be a list of strings, got {type(texts).__name__}.")
    if not texts:
        raise TextDataError(f"`{what}` is empty; give at least one text.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TextDataError(f"`{what}[{index}]` must be a string, got {type(text).__name__} ({text!r}).")
        if not text.strip():
            raise TextDataError(f"`{what}[{index}]` is empty or blank; every sample needs some text.")
    return list(texts)


def check_lengths(what: str, texts: Sequence[str], targets_what: str, targets: Any) -> None:
    """Raise unless a split has one target per text."""
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence):
        raise TextDataError(f"`{targets_what}` must be a list of class indices or names, got {type(targets).__name__}.")
    if len(texts) != len(targets):
        raise TextDataError(
            f"`{what}` has {len(texts)} texts but `{targets_what}` has {len(targets)} targets; "
            "give one target per text."
        )


def _rows(path: Path, what: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a CSV or JSON-lines file, and the field names it has."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            rows = [dict(row) for row in reader]
            return rows, list(reader.fieldnames or [])
    if suffix in JSON_LINES_SUFFIXES:
        records: list[dict[str, Any]] = []
        fields: dict[str, None] = {}
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise TextDataError(f"`{what}` {str(path)!r}, line {number}: not JSON ({error.msg}).") from None
                if not isinstance(record, dict):
                    raise TextDataError(
                        f"`{what}` {str(path)!r}, line {number}: each line must be a JSON object such as "
                        f'{{"text": "...", "label": "..."}}, got {type(record).__name__}.'
                    )
                records.append(record)
                fields.update(dict.fromkeys(record))
        return records, list(fields)
    raise TextDataError(
        f"`{what}` {str(path)!r}: unknown file type {suffix or '(none)'!r}. Use a CSV file "
        f"({', '.join(CSV_SUFFIXES)}, with a header row) or JSON lines ({', '.join(JSON_LINES_SUFFIXES)})."
    )


def _field_values(rows: list[dict[str, Any]], field: str, fields: list[str], what: str, path: Path) -> list[Any]:
    if field not in fields:
        raise TextDataError(
            f"`{what}` {str(path)!r} has no {field!r} field.{did_you_mean(field, fields)} Its fields: "
            f"{listing(fields)}. Name the right ones with text_field= and label_field=."
        )
    missing = [number for number, row in enumerate(rows, start=1) if row.get(field) is None]
    if missing:
        raise TextDataError(f"`{what}` {str(path)!r}: records {listing(missing)} have no {field!r} value.")
    return [row[field] for row in rows]


def _csv_targets(values: list[Any]) -> list[Any]:
    """CSV labels: class indices if every one is a whole number, else class names."""
    if values and all(isinstance(v, str) and _WHOLE_NUMBER.fullmatch(v.strip()) for v in values):
        return [int(v) for v in values]
    return values


def read_file(path: str | Path, what: str, text_field: str, label_field: str | None) -> TextSplit:
    """The texts (and, with ``label_field``, the targets) of a CSV or JSON-lines file."""
    file = Path(path)
    if not file.is_file():
        raise MissingPathError(f"`{what}` {str(file)!r} does not exist or is not a file.")
    rows, fields = _rows(file, what)
    if not rows:
        raise TextDataError(f"`{what}` {str(file)!r} holds no records.")
    texts = check_texts(f"{what}: {text_field}", _field_values(rows, text_field, fields, what, file))
    if label_field is None:
        return TextSplit(texts)
    targets = _field_values(rows, label_field, fields, what, file)
    if file.suffix.lower() in CSV_SUFFIXES:
        targets = _csv_targets(targets)
    return TextSplit(texts, targets)
