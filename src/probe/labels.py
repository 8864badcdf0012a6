"""Labels CSVs (`path,label[,split]`): one row per clip, read by column name."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from src.errors import UsageError

SPLITS = ("train", "val")


def listed(items, limit: int = 10) -> str:
    """At most `limit` items, comma-separated, then how many more (error lines stay one line)."""
    items = list(items)
    return ", ".join(items[:limit]) + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


@dataclass(frozen=True)
class LabelRow:
    line: int
    path: str
    label: str
    split: str | None


def read_labels(path: str | os.PathLike) -> list[LabelRow]:
    """Rows of a `path,label[,split]` CSV (a header naming the columns is optional)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found")
    with path.open(newline="") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header, rows, first = [c.strip().lower() for c in rows[0]], rows[1:], 2
    else:
        header, first = ["path", "label", "split"][:max(len(r) for r in rows)] if rows else [], 1
    if not rows:
        raise UsageError(f"{path}: no labelled rows")
    has_split = "split" in header
    out, seen = [], {}
    for line, row in enumerate(rows, start=first):
        cells = [c.strip() for c in row] + [""] * 3
        item, label, split = cells[0], cells[1], cells[header.index("split")] if has_split else ""
        if not item or not label:
            raise UsageError(f"{path}:{line}: needs a path and a label, got {row}")
        if item in seen:
            raise UsageError(f"{path}:{line}: '{item}' is already labelled on line {seen[item]}")
        seen[item] = line
        if has_split and split not in SPLITS:
            raise UsageError(f"{path}:{line}: " + (f"split '{split}' is not one of {', '.join(SPLITS)}" if split else
                             f"no split, but other rows have one (give {' or '.join(SPLITS)} on every row)"))
        out.append(LabelRow(line, item, label, split or None))
    return out


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()



def load_class_names(path: str | os.PathLike) -> list[str]:
    """Class names by index from a JSON object {"0": name, …} or a CSV with id,name columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classes file not found")
    if path.suffix == ".json":
        mapping = {int(k): v for k, v in json.loads(path.read_text()).items()}
    else:
        with path.open(newline="") as f:
            mapping = {int(row["id"]): row["name"] for row in csv.DictReader(f)}
    if sorted(mapping) != list(range(len(mapping))):
        raise UsageError(f"{path}: class indices are not 0..{len(mapping) - 1}")
    return [mapping[i] for i in range(len(mapping))]
