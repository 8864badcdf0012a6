"""index.html of a folder of results (a pipeline package, a pictures folder): the run's model and
settings, its videos in ``<video>`` elements, each window's original frames beside its overlays and
projections, and a link to every file, by relative path (so it works from the unpacked zip too)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from src.pages.html import asset, page, write_text_atomic

INDEX_NAME = "index.html"
VIDEO_SUFFIXES = (".mp4", ".webm")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")
_WINDOW = re.compile(r"(window_\d+)")


def _folder_order(folder: str) -> tuple:
    """Original frames first, then overlays, then projections, then the rest (by name)."""
    rank = 0 if folder.startswith("original") else 1 if "overlay" in folder else 2 if "projection" in folder else 3
    return rank, folder


def _href(name: str) -> str:
    return "./" + quote(name)  # percent-encoded: no file name can become a scheme or markup


def _windows(pictures: list[str], window_frames: dict[str, list[str]]) -> tuple[list[dict], list[str]]:
    """(per window: its pictures by folder, its original frames first; the pictures of no window).

    `window_frames` names each window's original frame pictures; they are shown beside the window's
    per-token pictures, as many per row as there are frames per token."""
    by_window: dict[str, dict[str, list[str]]] = {}
    claimed = {name for names in window_frames.values() for name in names}
    loose = []
    for name in pictures:
        found = _WINDOW.search(Path(name).name)
        if name in claimed:
            continue
        if found is None or name.lower().endswith(".gif"):
            loose.append(name)
            continue
        folder = str(Path(name).parent.as_posix())
        by_window.setdefault(found.group(1), {}).setdefault(folder, []).append(name)
    windows = []
    for window in sorted(by_window):
        columns = [{"folder": f, "pictures": sorted(by_window[window][f]), "per_row": 1}
                   for f in sorted(by_window[window], key=_folder_order)]
        originals = window_frames.get(window, [])
        if originals:
            tokens = max(len(c["pictures"]) for c in columns)
            columns.insert(0, {"folder": "original frames", "pictures": originals,
                               "per_row": max(1, -(-len(originals) // tokens))})
        windows.append({"window": window, "columns": columns})
    return windows, loose


def list_files(folder: str | os.PathLike) -> list[str]:
    """Every file under `folder` (relative, POSIX separators, sorted), hidden ones and index.html left out."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                  and p.relative_to(folder).as_posix() != INDEX_NAME)


def write_index(folder: str | os.PathLike, title: str, settings: dict, files: list[str] | None = None,
                window_frames: dict[str, list[str]] | None = None) -> Path:
    """Write ``<folder>/index.html`` over `files` (names relative to `folder`; default: every file there).

    `window_frames` ({"window_00001": [original frame pictures]}) puts each window's source frames
    beside its overlays and projections; without it they are listed with the other pictures.
    `settings` (model, flags, ... any JSON-able values) are shown as a table; nothing in them, nor
    any file name, is ever read as markup."""
    folder = Path(folder)
    names = list_files(folder) if files is None else sorted(set(files) - {INDEX_NAME})
    sizes = {name: (folder / name).stat().st_size if (folder / name).is_file() else None for name in names}
    pictures = [n for n in names if n.lower().endswith(PICTURE_SUFFIXES)]
    windows, loose = _windows(pictures, {w: [n for n in v if n in names] for w, v in (window_frames or {}).items()})
    data = {
        "title": title,
        "settings": settings,
        "videos": [{"name": n, "href": _href(n)} for n in names if n.lower().endswith(VIDEO_SUFFIXES)],
        "windows": windows, "other_pictures": loose,
        "files": [{"name": n, "href": _href(n), "bytes": sizes[n]} for n in names],
        "hrefs": {n: _href(n) for n in pictures},
    }
    return write_text_atomic(folder / INDEX_NAME, page(title, asset("index.css"), asset("index.html"), data,
                                                       asset("index.js")))
