"""Checks made before any work so a command never destroys what it reads: no output replaces an
input of the same command, and an output file is not an existing folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from src.errors import ConfigError


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name one file: the same path once resolved, or links to one inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): only equal paths count
        return False


def _refuse_overlap(outputs, inputs, consequence: str) -> None:
    inputs = [(what, Path(p)) for what, p in inputs]
    for out_what, out in outputs:
        out = Path(out)
        for in_what, path in inputs:
            if same_file(out, path):
                raise ConfigError(f"{out_what} {out} is {in_what} {path} of this command: {consequence}")


def refuse_output_over_input(outputs: Iterable[tuple[str, str | os.PathLike]],
                             inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """ConfigError (exit 2) when an output would replace an input. Both are (what, path) pairs,
    `what` naming the flag or role in the message."""
    _refuse_overlap(outputs, inputs, "writing it would replace an input; choose another output")


def refuse_folder_as_file(path: str | os.PathLike, flag: str) -> Path:
    """An output file path that is an existing folder is refused before any work (no temp file left)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file path (e.g. {path / 'predictions.csv'})")
    return path


def refuse_folder_over_input(outputs: Iterable[tuple[str, str | os.PathLike]],
                             inputs: Iterable[tuple[str, str | os.PathLike]]) -> None:
    """ConfigError (exit 2) when an output folder is an input folder (or file) of the same command:
    what is written there would mix with (or replace) what is read. Pairs as for
    `refuse_output_over_input`."""
    _refuse_overlap(outputs, inputs, "its files would mix with the inputs; choose another folder")
