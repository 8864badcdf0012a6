"""Labels CSVs (`path,label[,split]`): one row per clip, read by column name."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from src.errors import InputError, UsageError
from src.text_files import read_text

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


def path_key(name: str) -> str:
    """A labelled or recorded path as one string per file: resolved from the current folder
    (`./`, `..`, symlinks), a window's `#windowN` kept."""
    base, sep, window = name.partition("#window")
    return str(Path(base).expanduser().resolve()) + sep + window


def read_labels(path: str | os.PathLike) -> list[LabelRow]:
    """Rows of a `path,label[,split]` CSV. A first row naming `path` and `label` is a header: the
    columns are then read by name, in any order, others ignored. One file written two ways
    (`a/./x.mp4`, `a/x.mp4`) is one file: labelled twice is refused, as a literal repeat is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found")
    reader = csv.reader(io.StringIO(read_text(path, "labels file"), newline=""))
    rows = []
    for row in reader:
        if row and any(c.strip() for c in row):
            rows.append((reader.line_num, [c.strip() for c in row]))
    columns = {"path": 0, "label": 1, "split": 2}
    if rows and {"path", "label"} <= {c.lower() for c in rows[0][1]}:
        names = [c.lower() for c in rows.pop(0)[1]]
        columns = {name: names.index(name) for name in ("path", "label", "split") if name in names}
    elif rows and max(len(r) for _, r in rows) < 3:
        del columns["split"]
    if not rows:
        raise UsageError(f"{path}: no labelled rows")
    has_split = "split" in columns
    out, seen = [], {}
    for line, row in rows:
        cells = {name: row[i] if i < len(row) else "" for name, i in columns.items()}
        item, label, split = cells["path"], cells["label"], cells.get("split", "")
        if not item or not label:
            raise UsageError(f"{path}:{line}: needs a path and a label, got {row}")
        key = path_key(item)
        if key in seen:
            earlier = seen[key]
            same = "" if earlier.path == item else f" as '{earlier.path}'"
            raise UsageError(f"{path}:{line}: '{item}' is already labelled on line {earlier.line}{same}"
                             + (f" ('{earlier.label}', here '{label}')" if earlier.label != label else ""))
        if has_split and split not in SPLITS:
            raise UsageError(f"{path}:{line}: " + (f"split '{split}' is not one of {', '.join(SPLITS)}" if split else
                             f"no split, but other rows have one (give {' or '.join(SPLITS)} on every row)"))
        seen[key] = LabelRow(line, item, label, split or None)
        out.append(seen[key])
    return out


def file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()



def load_class_names(path: str | os.PathLike) -> list[str]:
    """Class names by index from JSON (an object {"0": name, …} or a list of names) or a CSV with
    id,name columns; anything else is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: classes file not found")
    text = read_text(path, "classes file")
    expected = 'a JSON object {"0": name, …}, a JSON list of names, or a CSV with id,name columns'
    try:
        if path.suffix == ".json":
            value = json.loads(text)
            if isinstance(value, list):
                value = dict(enumerate(value))
            if not isinstance(value, dict):
                raise ValueError(f"a JSON {type(value).__name__}")
            mapping = {int(k): v for k, v in value.items()}
        else:
            mapping = {int(row["id"]): row["name"] for row in csv.DictReader(io.StringIO(text, newline=""))}
    except (ValueError, KeyError, TypeError) as exc:
        reason = f"no {exc} column" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise InputError(f"{path}: not a classes file ({reason}); expected {expected}") from None
    if not all(isinstance(v, str) and v for v in mapping.values()):
        raise InputError(f"{path}: class names must be non-empty strings; expected {expected}")
    if sorted(mapping) != list(range(len(mapping))):
        raise UsageError(f"{path}: class indices are not 0..{len(mapping) - 1}")
    return [mapping[i] for i in range(len(mapping))]
