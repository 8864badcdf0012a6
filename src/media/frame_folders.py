"""Numbered frame folders: ``frame_000123.png`` files found, ordered and checked for gaps."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from src.media.images import is_hidden

DEFAULT_FRAME_PATTERN = r"frame_(\d+)\.[^./\\]+$"


def _compile_frame_pattern(pattern: str | re.Pattern) -> re.Pattern:
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    if compiled.groups != 1:
        raise ValueError(
            f"frame pattern {compiled.pattern!r} must have exactly one capture group "
            f"(has {compiled.groups})"
        )
    return compiled


def _frame_number(compiled: re.Pattern, name: str) -> int | None:
    match = compiled.search(name)
    if match is None or match.group(1) is None:
        return None
    try:
        return int(match.group(1))
    except ValueError:
        raise ValueError(
            f"{name}: frame pattern {compiled.pattern!r} captured {match.group(1)!r}, "
            "not an integer"
        ) from None


def parse_frame_number(name: str | os.PathLike, pattern: str = DEFAULT_FRAME_PATTERN) -> int | None:
    """Frame number found by ``pattern`` in the file name, or None if it does not match."""
    return _frame_number(_compile_frame_pattern(pattern), Path(name).name)


def find_frames(
    frame_dir: str | os.PathLike,
    pattern: str = DEFAULT_FRAME_PATTERN,
    first_frame: int | None = None,
    last_frame: int | None = None,
) -> list[tuple[int, Path]]:
    """``(frame_number, path)`` for matching files in ``frame_dir``, sorted numerically.

    Only frames within ``first_frame..last_frame`` (inclusive) are returned; two
    files with the same frame number in that range raise ValueError.
    """
    frame_dir = Path(frame_dir)
    compiled = _compile_frame_pattern(pattern)
    if not frame_dir.exists():
        raise FileNotFoundError(f"{frame_dir}: frame folder does not exist")
    if not frame_dir.is_dir():
        raise NotADirectoryError(f"{frame_dir}: not a folder")
    if first_frame is not None and last_frame is not None and first_frame > last_frame:
        raise ValueError(f"{frame_dir}: first_frame {first_frame} > last_frame {last_frame}")

    with os.scandir(frame_dir) as entries:
        names = [(entry.name, entry.is_file()) for entry in entries]
    frames: dict[int, Path] = {}
    for name, is_file in names:
        if is_hidden(name):
            continue
        number = _frame_number(compiled, name)
        if number is None or not is_file:
            continue
        if first_frame is not None and number < first_frame:
            continue
        if last_frame is not None and number > last_frame:
            continue
        path = frame_dir / name
        if number in frames:
            a, b = sorted([frames[number].name, name])
            raise ValueError(f"{frame_dir}: frame number {number} appears twice ({a}, {b})")
        frames[number] = path
    return [(n, frames[n]) for n in sorted(frames)]


def find_gaps(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Missing inclusive ranges between consecutive numbers: [1,2,5] -> [(3, 4)]."""
    ordered = sorted(set(int(n) for n in numbers))
    return [(a + 1, b - 1) for a, b in zip(ordered, ordered[1:]) if b - a > 1]
