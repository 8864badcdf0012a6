"""The explorer: one self-contained HTML page over an embeddings table.

A 2-D map of the rows (see layout.py) drawn on a canvas; hovering a point shows its thumbnail (the
window's middle frame, or the image), path, time span, frame numbers and label; points are coloured
by label, by source (video / frame folder / image folder), by position in time within their video
or by cluster; a search box filters paths and labels; clicking a point lists its nearest rows (exact
cosine, from src/search.py, over the rows on the page) with thumbnails and links to the sources.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src import search
from src.embeddings_table import open_dataset, table_config
from src.errors import UsageError
from src.pages.html import asset, jpeg_data_uri, packed, page, relative_href, write_text_atomic
from src.pages.layout import DEFAULT_FIT_ROWS, table_layout

logger = logging.getLogger(__name__)

COLOR_MODES = ("auto", "label", "source", "time", "cluster")
DEFAULT_MAX_POINTS = 100_000
DEFAULT_MAX_THUMBNAILS = 1000
DEFAULT_NEIGHBORS = 10
DEFAULT_CLUSTERS = 8
# queries per exact k-NN pass over the table (bounds the [queries, block] score matrix)
_KNN_QUERY_ROWS = 2048
SIM_STEPS = 65535  # similarities are stored as round((s + 1) / 2 * SIM_STEPS) in 16 bits
_ROW_COLUMNS = ("row_id", "item", "source", "source_type", "window_idx", "token_t", "start_frame", "end_frame",
                "frame_numbers", "frame_files", "timestamps", "num_padded_frames")


@dataclass(frozen=True)
class ExplorerSummary:
    """What a written explorer page holds."""

    path: Path
    table_rows: int
    rows_shown: int
    thumbnails: int
    labelled: int
    layout_reused: bool
    bytes: int


def write_explorer(table_dir: str | os.PathLike, output: str | os.PathLike, *, labels: str | os.PathLike | None = None,
                   color_by: str = "auto", max_points: int = DEFAULT_MAX_POINTS,
                   max_thumbnails: int = DEFAULT_MAX_THUMBNAILS, thumbnails: bool = True,
                   neighbors: int = DEFAULT_NEIGHBORS, clusters: int = DEFAULT_CLUSTERS,
                   fit_rows: int = DEFAULT_FIT_ROWS, seed: int = 0,
                   block_rows: int = search.DEFAULT_BLOCK_ROWS) -> ExplorerSummary:
    """Write the explorer page of the table in `table_dir` to `output` (one HTML file).

    At most `max_points` rows are shown (sampled with `seed` when the table has more), thumbnails
    for at most `max_thumbnails` of them (sampled; none with ``thumbnails=False``); `labels` is a
    ``path,label`` CSV as the probe reads it (rows match by row id, window id or source path)."""
    _check_settings(color_by, labels, max_points, max_thumbnails, neighbors, clusters, fit_rows)
    label_rows = None if labels is None else _read_labels(labels)  # a bad CSV is reported before the fit
    config = table_config(table_dir)
    dataset = open_dataset(table_dir)
    total = dataset.count_rows()
    positions = _shown_positions(total, max_points, seed)
    rows = dataset.take(positions, columns=list(_ROW_COLUMNS)).to_pylist()
    vectors = _vectors(dataset, positions)
    xy, reused = table_layout(table_dir, positions, vectors, fit_rows, seed)
    nbr, sims = _neighbours(table_dir, positions, total, vectors, neighbors, block_rows)
    label_names, label_codes = _labels(rows, label_rows, labels)
    output = Path(output)
    sources, groups, source_index = _sources(rows, output.parent)
    thumbs, thumb_index = _thumbnails(rows, max_thumbnails if thumbnails else 0, seed)
    data = {
        "table": str(table_dir), "table_rows": total, "shown": len(rows), "model": config.get("model"),
        "pooling": config.get("pooling"), "dim": config.get("dim"), "k": nbr.shape[1], "sim_steps": SIM_STEPS,
        "color_by": _default_mode(color_by, labels), "thumbnails": len(thumbs),
        "labelled": int((label_codes >= 0).sum()), "labels": label_names, "sources": sources, "groups": groups,
        "columns": _columns(rows, source_index, xy, label_codes, _clusters(vectors, clusters, seed), thumb_index,
                            nbr, sims),
        "thumbs": thumbs, "ramp": _ramp(),
    }
    text = render_explorer(data)
    write_text_atomic(output, text)
    logger.info("explorer: %s (%d of %d rows, %d thumbnails, %.1f MB)", output, len(rows), total, len(thumbs),
                len(text) / 1e6)
    return ExplorerSummary(output, total, len(rows), len(thumbs), data["labelled"], reused, output.stat().st_size)


def render_explorer(data: dict) -> str:
    """The page's HTML for its data (see write_explorer for the keys; bench/pages.py feeds it synthetic rows)."""
    title = f"Explorer: {data['shown']} of {data['table_rows']} rows of {data['table']}"
    return page(title, asset("explorer.css"), asset("explorer.html"), data, asset("explorer.js"))


def _check_settings(color_by, labels, max_points, max_thumbnails, neighbors, clusters, fit_rows) -> None:
    if color_by not in COLOR_MODES:
        raise UsageError(f"colour mode {color_by!r} is not one of {', '.join(COLOR_MODES)}")
    if color_by == "label" and labels is None:
        raise UsageError("colouring by label needs a labels CSV (path,label)")
    for name, value, least in (("max_points", max_points, 1), ("max_thumbnails", max_thumbnails, 0),
                               ("neighbors", neighbors, 0), ("clusters", clusters, 1), ("fit_rows", fit_rows, 2)):
        if value < least:
            raise UsageError(f"{name} must be >= {least}, got {value}")


def _default_mode(color_by: str, labels) -> str:
    return ("label" if labels is not None else "source") if color_by == "auto" else color_by


def _shown_positions(total: int, max_points: int, seed: int) -> np.ndarray:
    if total <= max_points:
        return np.arange(total, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False)).astype(np.int64)


def _vectors(dataset, positions: np.ndarray) -> np.ndarray:
    column = dataset.take(positions, columns=["vector"]).column("vector").combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(positions), width).astype(np.float32)


def _neighbours(table_dir, positions: np.ndarray, total: int, vectors: np.ndarray, k: int,
                block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(page indices [n, k'], similarities [n, k']) of each shown row's nearest other shown rows,
    -1 where there are fewer; exact cosine over the table by src/search.py, kept to the shown rows.

    One pass over the table per 2 048 rows shown: O(n x rows x D) multiply-adds, the explorer's
    largest cost on big tables (k = 0 skips it)."""
    n = len(positions)
    page_of = np.full(total, -1, np.int64)
    page_of[positions] = np.arange(n)
    k = min(k, max(n - 1, 0))
    # when rows are sampled out, ask for enough candidates that k shown ones are among them
    asked = min(total, (k + 1) * math.ceil(total / max(n, 1)), 2000)
    nbr = np.full((n, k), -1, np.int32)
    sims = np.zeros((n, k), np.float32)
    if k == 0:
        return nbr, sims
    for start in range(0, n, _KNN_QUERY_ROWS):
        scores, found = search.top_k(table_dir, vectors[start:start + _KNN_QUERY_ROWS], asked, block_rows)
        for i, (row_scores, row_found) in enumerate(zip(scores, page_of[found]), start=start):
            keep = (row_found >= 0) & (row_found != i)
            picked = row_found[keep][:k]
            nbr[i, :len(picked)] = picked
            sims[i, :len(picked)] = row_scores[keep][:k]
    return nbr, sims


def _clusters(vectors: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of each row, on the L2-normalised vectors (so it follows cosine similarity)."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int32)
    clusters = min(clusters, n)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if clusters == 1:
        return np.zeros(n, np.int32)
    from sklearn.cluster import KMeans, MiniBatchKMeans

    # mini-batches beyond a few thousand rows (seeded from a subsample): about 1 s for 20 000 x 256 here
    model = (KMeans(clusters, n_init=3, random_state=seed) if n <= 5_000
             else MiniBatchKMeans(clusters, n_init=3, random_state=seed, batch_size=4096))
    return model.fit_predict(unit).astype(np.int32)


@functools.lru_cache(maxsize=65536)
def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _label_key(name: str) -> str:
    """A path (with its ``#window<i>`` / ``#t<j>`` suffix, if any) made absolute, to compare labels and rows."""
    base, sep, rest = name.partition("#")
    return _absolute(base) + sep + rest


def _read_labels(path) -> dict[str, str]:
    """{absolute path (with its #window suffix, if any): label} of a path,label CSV, read as the probe does."""
    from src.probe import read_labels

    return {_label_key(r.path): r.label for r in read_labels(path)}


def _labels(rows: list[dict], by_key: dict[str, str] | None, labels) -> tuple[list[str], np.ndarray]:
    """(label names, code of each row or -1): a row takes the label of its row id, its window id
    (``<source>#window<i>``) or its source, in that order; paths compare as absolute paths."""
    codes = np.full(len(rows), -1, np.int32)
    if by_key is None:
        return [], codes
    names = sorted(set(by_key.values()))
    code_of = {name: i for i, name in enumerate(names)}
    used = set()
    for i, row in enumerate(rows):
        for key in (row["row_id"], row["item"], row["source"]):
            label = by_key.get(_label_key(key)) if key else None
            if label is not None:
                codes[i] = code_of[label]
                used.add(_label_key(key))
                break
    if len(used) < len(by_key):
        logger.warning("%s: %d labelled path(s) match no row shown (e.g. %s)", labels, len(by_key) - len(used),
                       next(k for k in by_key if k not in used))
    return names, codes


def _thumbnails(rows: list[dict], limit: int, seed: int) -> tuple[list[str], np.ndarray]:
    """(JPEG data URIs, index of each row's thumbnail or -1) for up to `limit` sampled rows: each
    row's preview frame (the window's middle real frame, or the image), read by src/search.py."""
    index = np.full(len(rows), -1, np.int32)
    chosen = np.arange(len(rows)) if len(rows) <= limit else \
        np.random.default_rng(seed).choice(len(rows), limit, replace=False)
    # one source after another, so a video is opened once
    chosen = sorted(chosen.tolist(), key=lambda i: (rows[i]["source"] or "", rows[i]["start_frame"] or 0))
    uris: list[str] = []
    loader = search.FrameLoader()
    try:
        for i in chosen:
            frame = loader(rows[i])
            if frame is not None:
                index[i] = len(uris)
                uris.append(jpeg_data_uri(frame))
    finally:
        loader.close()
    return uris, index


def _source_group(row: dict) -> tuple[str, str]:
    """(kind, folder or file) a row is coloured by: its video, its frame folder, its image's folder."""
    kind, source = row["source_type"] or "image", row["source"] or ""
    if kind == "image":
        return "image folder", str(Path(source).parent)
    return ("frame folder" if kind == "frames" else kind), source


def _sources(rows: list[dict], page_dir: Path) -> tuple[list[dict], list[dict], np.ndarray]:
    """(distinct sources (path, kind, link from the page, group), source groups, source of each row)."""
    sources, groups, source_of, group_of = [], [], {}, {}
    for row in rows:
        source = row["source"] or ""
        if source not in source_of:
            kind, group = _source_group(row)
            if (kind, group) not in group_of:
                group_of[kind, group] = len(groups)
                groups.append({"kind": kind, "path": group})
            source_of[source] = len(sources)
            sources.append({"path": source, "kind": row["source_type"] or "image",
                            "href": relative_href(source, page_dir) if source else None,
                            "group": group_of[kind, group]})
    return sources, groups, np.array([source_of[r["source"] or ""] for r in rows], np.int32)


def _first_frame(row: dict) -> int:
    frames = row["frame_numbers"] or []
    return int(frames[0]) if frames else (-1 if row["start_frame"] is None else int(row["start_frame"]))


def _last_frame(row: dict) -> int:
    frames = row["frame_numbers"] or []
    if row["token_t"] is None and frames:
        frames = frames[:max(len(frames) - int(row["num_padded_frames"] or 0), 1)]  # real frames only
    return int(frames[-1]) if frames else (-1 if row["end_frame"] is None else int(row["end_frame"]))


def _time_in_source(rows: list[dict], source_index: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Position in time within its video or frame folder, 0..1 (NaN for images)."""
    position = np.full(len(rows), np.nan, np.float32)
    timed = np.array([(r["source_type"] or "image") != "image" and f >= 0 for r, f in zip(rows, first)], bool)
    for s in np.unique(source_index[timed]):
        members = timed & (source_index == s)
        lo, hi = first[members].min(), first[members].max()
        position[members] = (first[members] - lo) / (hi - lo) if hi > lo else 0.5
    return position


def _columns(rows, source_index, xy, label_codes, cluster, thumb_index, nbr, sims) -> dict:
    """The per-row numeric columns, packed (see html.packed)."""
    first = np.array([_first_frame(r) for r in rows], np.int64)
    spans = [search.time_range(r) for r in rows]
    missing = lambda v: -1 if v is None else int(v)  # noqa: E731
    return {
        "x": packed(xy[:, 0], "f4"), "y": packed(xy[:, 1], "f4"), "source": packed(source_index, "i4"),
        "label": packed(label_codes, _small(label_codes)), "cluster": packed(cluster, _small(cluster)),
        "thumb": packed(thumb_index, "i4"),
        "window": packed([missing(r["window_idx"]) for r in rows], "i4"),
        "token": packed([missing(r["token_t"]) for r in rows], "i2"),
        "f0": packed(first, "i4"), "f1": packed([_last_frame(r) for r in rows], "i4"),
        "t0": packed([np.nan if a is None else a for a, _ in spans], "f4"),
        "t1": packed([np.nan if b is None else b for _, b in spans], "f4"),
        "time": packed(_time_in_source(rows, source_index, first), "f4"),
        "nbr": packed(nbr, "i4"),
        # similarities in [-1, 1] as 16-bit steps of 3e-5: a third of the page at 100 000 rows is neighbours
        "sim": packed(np.rint((np.clip(sims, -1, 1) + 1) * SIM_STEPS / 2), "u2"),
    }


def _small(codes: np.ndarray) -> str:
    """The narrowest signed type for codes (-1 = none)."""
    return "i2" if len(codes) == 0 or int(np.max(codes)) < 2**15 else "i4"


def _ramp() -> list[str]:
    """64 colours of matplotlib's viridis, for positions in time."""
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.linspace(0, 1, 64))
    return ["#%02x%02x%02x" % tuple(int(round(c * 255)) for c in color[:3]) for color in rgba]
