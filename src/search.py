"""Exact cosine search over an embeddings table, in blocks: the k nearest rows of a query, a CSV and a
contact sheet of their frames, and the near-duplicate pairs of a table.

Memory stays flat: the table is read one block of `block_rows` vectors at a time (pyarrow scanner,
no read-ahead), and only the k best candidates per query are kept between blocks. Queries must come
from the table's own encoder (model, crop, clip length) and are pooled as its rows were.
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from src.embeddings_table import (
    Pooling, TableConfigError, TableSnapshot, build_rows, row_config, rows_from_feature_file, snapshot,
)
from src.frames import VideoReader, load_image
from src.render import annotate, side_by_side, stack_vertical, write_png

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_ROWS = 16384
# float32 dot products of two bit-identical unit vectors land within a few 1e-7 of 1 (measured
# 0.9999998-1.0000002 at width 192): `near_duplicates` counts a pair when its similarity is at
# least the threshold minus this, so `--threshold 1` finds every pair of identical vectors
SIMILARITY_TOLERANCE = 1e-5
Table = "str | os.PathLike | TableSnapshot"  # a table folder, or one snapshot of it
TILE_W, TILE_H, CAPTION_H, GAP = 160, 120, 16, 4
# provenance written next to each match in the CSV
CSV_COLUMNS = ("row_id", "source", "source_type", "window_idx", "token_t", "start_frame", "end_frame",
               "start_time", "end_time", "token_file")


@dataclass
class Query:
    """One query vector (already pooled as the table's rows) and what it came from."""

    name: str
    vector: np.ndarray  # [D] float32
    row: dict | None = None  # its provenance, when it has frames to show


def pooling_of(config: dict) -> Pooling:
    """The Pooling a table's rows were made with ("mean+l2" → Pooling("mean", l2=True))."""
    method, _, norm = config["pooling"].partition("+")
    return Pooling(method, l2=norm == "l2")


# --------------------------------------------------------------------------- queries


def _fits(config: dict, found: dict, what: str) -> None:
    keys = ("model", "dim", "img_size", "clip_frames", "spatial", "generation", "output", "layers")
    # a key either side does not record cannot be compared (older files, newer fields): only values that differ count
    diff = [f"{k} {found.get(k)!r} (table: {config.get(k)!r})" for k in keys
            if config.get(k) is not None and found.get(k) is not None and found.get(k) != config.get(k)]
    if diff:
        raise TableConfigError(f"{what}: not from the table's encoder ({', '.join(diff)}); "
                               "a query must be encoded with the table's own model")


def queries_from_row(table_dir: Table, row_id: str) -> list[Query]:
    """The vector of a row of the table itself."""
    import pyarrow.compute as pc

    snap = snapshot(table_dir)
    table = snap.dataset().to_table(filter=pc.field("row_id") == row_id)
    if table.num_rows == 0:
        raise TableConfigError(f"{snap.dir}: no row with row_id {row_id!r}")
    row = table.slice(0, 1).to_pylist()[0]
    return [Query(row_id, np.asarray(row.pop("vector"), np.float32), row)]


def queries_from_feature_file(path: str | os.PathLike, config: dict,
                              image_root: str | os.PathLike | None = None) -> list[Query]:
    """One query per window / image of a token file, pooled as the table's rows; refused when the
    file was written by another encoder."""
    queries = []
    for rows in rows_from_feature_file(path, pooling_of(config), image_root):
        _fits(config, row_config(rows[0]), str(path))
        queries += [Query(r["row_id"], r["vector"], r) for r in rows]
    return queries


def queries_from_media(config: dict, *, image: str | None = None, video: str | None = None, start_frame: int = 0,
                       frame_step: int = 1, device: str = "auto", dtype: str = "auto",
                       video_backend: str = "auto") -> list[Query]:
    """Encode an image (repeated to the table's clip length) or a clip of a video (the table's clip
    length from `start_frame`) with the table's model, pooled as its rows."""
    from src.inference import ClipEncoder

    if config.get("model") is None or config.get("clip_frames") is None:
        raise TableConfigError("the table does not record its model and clip length: encode the query yourself "
                               "and pass it as a feature file")
    frames_per_clip = int(config["clip_frames"])
    if video is not None:
        with VideoReader(video, backend=video_backend) as reader:
            indices = list(range(start_frame, start_frame + frames_per_clip * frame_step, frame_step))
            if start_frame < 0 or indices[-1] >= reader.num_frames:
                raise TableConfigError(f"{video}: frames {indices[0]}..{indices[-1]} needed (the table's clips are "
                                       f"{frames_per_clip} frames), the video has {reader.num_frames}")
            frames = reader.get_frames(indices)
            fps, timestamps = reader.fps, [round(t, 6) for t in reader.timestamps(indices)]
        meta = {"source_type": "video", "video_path": str(Path(video).resolve()), "frame_numbers": indices,
                "fps": fps, "timestamps": timestamps, "frame_step": frame_step}
    else:
        frames = load_image(image)[None]
        meta = {"source_type": "image", "source": str(Path(image).resolve()), "image_frames": frames_per_clip}
    output = config.get("output") or "last"  # what the table's tokens were: the last layer, levels or blocks
    layers = output if output in ("last", "hierarchical") else config.get("layers") or "last"
    # encoded as the table's rows were: same model, crop, layers and spatial mode (centre crop or whole frame)
    encoder = ClipEncoder(config["model"], device=device, dtype=dtype, img_size=config.get("img_size"), layers=layers,
                          spatial=config.get("spatial") or "center")
    clip = encoder.preprocess(frames)  # [C, T, crop, crop]; an image: T = 1, repeated below
    clip = clip.expand(-1, frames_per_clip, -1, -1) if clip.shape[1] == 1 else clip
    features = encoder.encode(clip[None])[0]  # [N, D] fp16
    h, w = frames.shape[1:3]
    meta.update(grid=list(encoder.grid(frames_per_clip, (h, w))), image_size=[h, w], crop_box=encoder.crop_box(h, w),
                spatial=encoder.spatial.mode,
                model=config["model"], start_frame=meta.get("frame_numbers", [None])[0],
                end_frame=meta.get("frame_numbers", [None])[-1])
    rows = build_rows(features, encoder.describe(frames_per_clip, (h, w)), meta, pooling_of(config))
    _fits(config, row_config(rows[0]), video or image)
    return [Query(r["row_id"], r["vector"], r) for r in rows]


# --------------------------------------------------------------------------- exact k-NN


def _blocks(table: TableSnapshot, block_rows: int, columns=("vector",)) -> Iterator[np.ndarray]:
    """The table's vectors, `block_rows` at a time, as float32 [n, D] (row order = dataset order)."""
    dataset = table.dataset()
    for batch in dataset.to_batches(columns=list(columns), batch_size=block_rows, batch_readahead=0,
                                    fragment_readahead=0, use_threads=False):
        if batch.num_rows == 0:
            continue
        vectors = batch.column(0)
        width = vectors.type.list_size
        yield vectors.flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, width)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _keep_best(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest scores per row (ties: lower index first), sorted."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, indices = np.take_along_axis(scores, part, 1), np.take_along_axis(indices, part, 1)
    order = np.lexsort((indices, -scores), axis=1) if scores.shape[0] else np.empty_like(indices)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def top_k(table_dir: Table, queries: np.ndarray, k: int,
          block_rows: int = DEFAULT_BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN: (similarities [Q, k'], row positions [Q, k']) best first, k' = min(k, rows).

    Row positions index the snapshot's dataset in part-file order: `fetch_rows` with the same
    snapshot turns them into rows. A row repeating an earlier row's row_id is skipped.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    table = snapshot(table_dir)
    k = min(k, table.unique_rows)
    q = _unit(np.atleast_2d(queries))  # [Q, D]
    if k == 0:  # parts without rows
        return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
    best_s = np.empty((len(q), 0), np.float32)
    best_i = np.empty((len(q), 0), np.int64)
    offset = 0
    for block in _blocks(table, block_rows):
        if block.shape[1] != q.shape[1]:
            raise TableConfigError(f"{table.dir}: table vectors are {block.shape[1]} wide, the query {q.shape[1]}")
        scores = q @ _unit(block).T  # [Q, n]
        if table.duplicate is not None:
            scores[:, table.duplicate[offset:offset + len(block)]] = -np.inf
        index = np.broadcast_to(np.arange(offset, offset + len(block)), scores.shape)
        best_s, best_i = _keep_best(np.concatenate([best_s, scores], 1), np.concatenate([best_i, index], 1), k)
        offset += len(block)
    return best_s, best_i


def fetch_rows(table_dir: Table, positions) -> list[dict]:
    """Rows (without their vectors) at positions of the snapshot's dataset, in the order given."""
    dataset = snapshot(table_dir).dataset()
    names = [n for n in dataset.schema.names if n != "vector"]
    positions = np.asarray(positions, np.int64).reshape(-1)
    if positions.size == 0:
        return []
    unique, inverse = np.unique(positions, return_inverse=True)
    rows = dataset.take(unique, columns=names).to_pylist()
    return [rows[i] for i in inverse]


# --------------------------------------------------------------------------- outputs


def time_range(row: dict) -> tuple:
    """(first, last) timestamp of a row's real (unpadded) frames; (None, None) without timestamps."""
    stamps = row.get("timestamps") or []
    if not stamps:
        return None, None
    real = len(stamps) - (0 if row.get("token_t") is not None else int(row.get("num_padded_frames") or 0))
    return stamps[0], stamps[max(real, 1) - 1]


def write_matches_csv(path: str | os.PathLike, queries: list[Query], scores: np.ndarray, rows: list[list[dict]]) -> Path:
    """One line per (query, rank): similarity and the match's provenance."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "rank", "similarity", *CSV_COLUMNS])
        for query, query_scores, matches in zip(queries, scores, rows):
            for rank, (score, row) in enumerate(zip(query_scores, matches), start=1):
                start, end = time_range(row)
                values = {**row, "start_time": start, "end_time": end}
                writer.writerow([query.name, rank, f"{score:.6f}", *("" if values.get(c) is None else values[c]
                                                                     for c in CSV_COLUMNS)])
    os.replace(tmp, path)
    return path


def preview_frame_id(row: dict) -> int | None:
    """The frame a row is shown by: the middle real frame of its window (or temporal token)."""
    frames = row.get("frame_numbers") or []
    if not frames:
        return None
    real = len(frames) - (0 if row.get("token_t") is not None else int(row.get("num_padded_frames") or 0))
    return frames[max(real, 1) // 2 if real > 1 else 0]


class FrameLoader:
    """The preview frame of a table row, from its source (video, frame files or image); None if gone."""

    def __init__(self):
        self._video: VideoReader | None = None

    def __call__(self, row: dict) -> np.ndarray | None:
        try:
            kind, frame = row.get("source_type"), preview_frame_id(row)
            if kind == "video":
                if self._video is None or str(self._video.path) != row["source"]:
                    self.close()
                    self._video = VideoReader(row["source"])
                return self._video.get_frames([frame])[0]
            if kind == "frames" and row.get("frame_files"):
                return load_image(row["frame_files"][row["frame_numbers"].index(frame)])
            if kind == "image" or (kind is None and row.get("source")):
                return load_image(row["source"])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            logger.warning("%s: no preview frame (%s)", row.get("row_id"), exc)
        return None

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None


def thumbnail(frame: np.ndarray | None) -> np.ndarray:
    """A frame scaled (aspect kept) into a TILE_W × TILE_H black tile; grey when there is none."""
    from PIL import Image

    tile = np.zeros((TILE_H, TILE_W, 3), np.uint8)
    if frame is None:
        tile[:] = 64
        return tile
    h, w = frame.shape[:2]
    scale = min(TILE_W / w, TILE_H / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR))
    top, left = (TILE_H - nh) // 2, (TILE_W - nw) // 2
    tile[top:top + nh, left:left + nw] = small
    return tile


def _cell(frame: np.ndarray | None, caption: str) -> np.ndarray:
    strip = annotate(np.zeros((CAPTION_H, TILE_W, 3), np.uint8), caption, margin=0, padding=1)
    return stack_vertical([thumbnail(frame), strip])


def cell_origin(index: int, columns: int) -> tuple[int, int]:
    """(top, left) pixel of cell `index` of a contact sheet (for readers of the sheet, e.g. tests)."""
    row, col = divmod(index, columns)
    return row * (TILE_H + CAPTION_H + GAP), col * (TILE_W + GAP)


def contact_sheet(path: str | os.PathLike, query: Query, scores, matches: list[dict], columns: int = 6) -> Path:
    """PNG: the query's frame (when it has one), then each match's preview frame with rank and similarity."""
    load = FrameLoader()
    try:
        cells = [_cell(load(query.row) if query.row else None, f"query {Path(query.name).name}"[:26])]
        for rank, (score, row) in enumerate(zip(scores, matches), start=1):
            cells.append(_cell(load(row), f"#{rank} {score:.3f} {Path(row['row_id']).name}"[:26]))
    finally:
        load.close()
    blank = np.zeros_like(cells[0])
    lines = []
    for start in range(0, len(cells), columns):
        line = cells[start:start + columns]
        line += [blank] * (columns - len(line)) if start else []
        lines.append(side_by_side(line, gap=GAP))
    return write_png(stack_vertical(lines, gap=GAP), path)


# --------------------------------------------------------------------------- near duplicates


def near_duplicates(table_dir: Table, threshold: float, block_rows: int = DEFAULT_BLOCK_ROWS,
                    tolerance: float = SIMILARITY_TOLERANCE) -> list[tuple[int, int, float]]:
    """Pairs (i, j, similarity), i < j, of rows at least `threshold - tolerance` similar (float32
    rounding: see SIMILARITY_TOLERANCE); two blocks in memory. Repeated row ids count once."""
    table = snapshot(table_dir)
    skip = table.duplicate
    pairs = []
    offset_a = 0
    for a in _blocks(table, block_rows):
        a = _unit(a)
        offset_b = 0
        for b in _blocks(table, block_rows):
            if offset_b + len(b) <= offset_a:  # blocks before this one: their pairs were found already
                offset_b += len(b)
                continue
            scores = a @ _unit(b).T  # [na, nb]
            ia, ib = np.nonzero(scores >= threshold - tolerance)
            ga, gb = ia + offset_a, ib + offset_b
            keep = ga < gb
            if skip is not None:
                keep &= ~skip[ga] & ~skip[gb]
            pairs += [(int(i), int(j), float(s)) for i, j, s in zip(ga[keep], gb[keep], scores[ia[keep], ib[keep]])]
            offset_b += len(b)
        offset_a += len(a)
    return sorted(pairs, key=lambda p: (-p[2], p[0], p[1]))


def duplicate_groups(pairs: list[tuple[int, int, float]]) -> dict[int, int]:
    """{row position: group id} joining rows linked by a pair (union-find); group id = its smallest row."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return {x: find(x) for x in parent}


def write_duplicates_csv(path: str | os.PathLike, pairs, rows_a: list[dict], rows_b: list[dict],
                         groups: dict[int, int]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "similarity", "row_a", "row_b", "source_a", "source_b"])
        for (i, _, score), a, b in zip(pairs, rows_a, rows_b):
            writer.writerow([groups[i], f"{score:.6f}", a["row_id"], b["row_id"], a["source"], b["source"]])
    os.replace(tmp, path)
    return path
