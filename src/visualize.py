"""Feature files → colour grids per temporal token → pictures aligned with their source frames.

Shared by `visualize_embeddings.py` (PNGs for given feature files) and `vjepa2_pipeline.py`
(PNGs + animations for a run). The token grid, temporal mapping and crop box come from each
file's metadata: nothing is re-derived or hard-coded here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from src.errors import ConfigError
from src.features import load_any, outputs_written
from src.frames import VideoReader, load_image
from src.projection import Projection, fit_projection, sample_tokens
from src.render import annotate, overlay, projection_image, token_colors_to_grids, write_png

logger = logging.getLogger(__name__)

METHODS = ("umap", "pca")


@dataclass
class FeatureItem:
    """One unit of features with what is needed to draw it: a window or one image of a chunk."""

    name: str
    features: torch.Tensor  # [N, D]
    metadata: dict
    grid: tuple[int, int, int]
    file: Path | None = None  # the feature file it was read from


def picture_stem(item: FeatureItem) -> str:
    """File-name stem of an item's pictures: the window file's stem, or the image's relative path
    with '/' as '__' (two items with the same stem write the same picture files)."""
    return item.name.replace("/", "__")


def chunk_source_path(meta: dict, image_root: Path | None) -> Path | None:
    """Source image of an image-chunk item: its relative path under `image_root` (the extraction's
    --image_dir; without it, relative to the current folder). None for windows."""
    if meta.get("source_type") == "video" or meta.get("frame_files") or not meta.get("source"):
        return None
    path = Path(meta["source"])
    return image_root / path if image_root is not None and not path.is_absolute() else path


@dataclass
class InputScan:
    """What the inputs hold, read from their metadata only (no feature data), before any fitting."""

    clashes: dict[tuple[Path, Path], list[str]]  # (earlier, later input) → picture stems both write
    chunk_items: int = 0  # image-chunk items whose source path is relative (depends on --image_root)
    chunk_found: int = 0  # of those, found on disk (counting stops at the first one)
    first_missing: tuple[Path, Path] | None = None  # (chunk file, source path) of the first not found


def scan_inputs(paths: list[Path], image_root: Path | None, check_sources: bool = True) -> InputScan:
    """Items whose pictures would land on the same files, and whether the relative source images of
    image chunks can be found (a chunk's keys are relative to the extraction's --image_dir)."""
    scan = InputScan(clashes={})
    owner: dict[str, Path] = {}
    for item in iter_feature_items(paths):
        stem = picture_stem(item)
        if stem in owner:
            scan.clashes.setdefault((owner[stem], item.file), []).append(item.name)
        owner[stem] = item.file
        path = chunk_source_path(item.metadata, image_root) if check_sources else None
        if path is None or Path(item.metadata["source"]).is_absolute():
            continue
        scan.chunk_items += 1
        if scan.chunk_found:
            continue  # one found is enough to know the folder is right: no stat per image
        if path.is_file():
            scan.chunk_found += 1
        elif scan.first_missing is None:
            scan.first_missing = (item.file, path)
    return scan


def iter_feature_items(paths: list[Path]) -> Iterator[FeatureItem]:
    """Window files (.pt / .safetensors) and image chunk files, one item at a time (streamed)."""
    for path in paths:
        path = Path(path)
        record = load_any(path)
        if "features" in record:
            meta = record.get("metadata", {})
            yield FeatureItem(path.stem, record["features"], meta, _grid_of(record, path), path)
        else:  # chunk: {relative_path: {"features", "metadata"}}
            for rel, entry in record.items():
                yield FeatureItem(rel, entry["features"], entry.get("metadata", {}), _grid_of(entry, path), path)


def _grid_of(record: dict, path: Path) -> tuple[int, int, int]:
    meta = record.get("metadata", {})
    grid = meta.get("grid")
    if grid is None:  # older files: from model_info, as the seed format records it
        info = record.get("model_info") or meta.get("model_info") or {}
        if "num_output_temporal" in info and "spatial_patches" in info:
            sp = info["spatial_patches"]
            hp, wp = (sp, sp) if isinstance(sp, int) else sp
            grid = (info["num_output_temporal"], hp, wp)
    if grid is None:
        raise ValueError(f"{path}: no token grid in the metadata (need metadata.grid or model_info)")
    tp, hp, wp = (int(g) for g in grid)
    if tp * hp * wp != record["features"].shape[0]:
        raise ValueError(f"{path}: grid {tp}×{hp}×{wp} does not match {record['features'].shape[0]} tokens")
    return tp, hp, wp


def digest(value) -> str:
    """sha256 of a JSON-able value (keys sorted): the identity of a set of settings."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def inputs_key(paths: list[Path]) -> list:
    """What a projection fitted on `paths` depends on, per file: name, size, modification time (a
    rewritten feature file is a different input, as `make` would judge it)."""
    return [[Path(p).name, (st := Path(p).stat()).st_size, st.st_mtime_ns] for p in paths]


def projection_keys(paths: list[Path], methods: list[str], sample_size: int, seed: int, n_neighbors: int = 15,
                    min_dist: float = 0.1, metric: str = "cosine") -> dict[str, str]:
    """Per method, a digest of the inputs and every setting its projection depends on: equal keys,
    equal colours (see :func:`fit_projections`)."""
    inputs = inputs_key(paths)
    keys = {}
    for method in methods:
        settings = {"sample_size": sample_size, "seed": seed}
        if method == "umap":
            settings.update(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric)
        keys[method] = digest({"method": method, "settings": settings, "inputs": inputs, "version": 3})  # 3: PCA init
    return keys


def _saved_projection(path: Path, key: str) -> Projection | None:
    """The projection saved at `path` if it was fitted with this key (same inputs and settings)."""
    if not path.is_file():
        return None
    try:
        projection = Projection.load(path)
    except (ValueError, KeyError, OSError) as exc:
        logger.warning("%s: unreadable saved projection (%s); fitting again", path, exc)
        return None
    if projection.params.get("inputs_key") != key:
        logger.info("%s: features or projection settings changed; fitting again", path)
        return None
    return projection


def fit_projections(paths: list[Path], methods: list[str], sample_size: int, seed: int, n_neighbors: int = 15,
                    min_dist: float = 0.1, metric: str = "cosine", save_dir: Path | None = None,
                    overwrite: bool = False) -> dict[str, Projection]:
    """One projection per method, fitted once on a deterministic sample of all tokens of the run.

    With `save_dir`, each is saved there as `<method>.npz` and reused by a later call whose feature
    files and settings are unchanged (unless `overwrite`), so a rerun fits nothing.
    """
    keys = projection_keys(paths, methods, sample_size, seed, n_neighbors, min_dist, metric)
    projections, todo = {}, []
    for method, key in keys.items():
        saved = None if save_dir is None or overwrite else _saved_projection(save_dir / f"{method}.npz", key)
        if saved is not None:
            logger.info("%s projection: reusing %s (same features and settings)", method, save_dir / f"{method}.npz")
            projections[method] = saved
        else:
            todo.append((method, key))
    if not todo:
        return projections
    # a generator: one window in memory at a time, whatever the number of windows
    items = tqdm(paths, unit="file", desc="sampling tokens", disable=None, leave=False)
    sample = sample_tokens((item.features for item in iter_feature_items(items)), sample_size, seed=seed)
    logger.info("fitting %s on %d sampled tokens of %d dims", "+".join(m for m, _ in todo), *sample.shape)
    for method, key in todo:
        start = time.perf_counter()
        projection = fit_projection(sample, method=method, n_neighbors=n_neighbors, min_dist=min_dist,
                                    metric=metric, seed=seed)
        logger.info("%s projection fitted in %.1f s", method, time.perf_counter() - start)
        projection.params["inputs_key"] = key
        if save_dir is not None:
            try:
                save_dir.mkdir(parents=True, exist_ok=True)
                projection.save(save_dir / f"{method}.npz")
            except NotImplementedError as exc:  # e.g. UMAP with a metric only pickle could store
                logger.info("%s projection not saved: %s", method, exc)
        projections[method] = projection
    return projections


def finished_outputs(record: Path, key: str, root: Path) -> list[Path] | None:
    """The files under `root` a finished step listed in `record` (see :func:`record_outputs`), if it
    ran with this `key` and every file is still there with the size it had: None if anything differs."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key:
        return None
    files = [root / name for name in data.get("files", {})]
    for path, size in zip(files, data.get("files", {}).values()):
        try:
            if path.stat().st_size != size:
                return None
        except OSError:
            return None
    return files


def record_outputs(record: Path, key: str, files: list[Path], root: Path) -> None:
    """List `files` (relative to `root`) with their sizes as the finished output of a step run with
    `key`; written atomically, after the files."""
    record.parent.mkdir(parents=True, exist_ok=True)
    entries = {str(Path(f).relative_to(root)): Path(f).stat().st_size for f in files}
    tmp = record.with_name(f".{record.name}.tmp")
    tmp.write_text(json.dumps({"key": key, "files": entries}, indent=1) + "\n")
    os.replace(tmp, record)


def token_grids(item: FeatureItem, projection: Projection) -> np.ndarray:
    """`[Tp, Hp, Wp, 3]` uint8 colours: UMAP → RGB of its 3 components; PCA → component 1 via turbo."""
    features = item.features.float().numpy()
    colors = projection.turbo_colors(features) if projection.method == "pca" else projection.colors(features)
    return token_colors_to_grids(colors, item.grid)


class FrameSource:
    """Source frames of an item, from its metadata: frame files, a video, or one image."""

    def __init__(self, image_root: Path | None = None):
        self.image_root = image_root
        self._video: VideoReader | None = None

    def frames(self, item: FeatureItem) -> tuple[list[int], list[np.ndarray]]:
        """(frame ids, frames) of the real (unpadded) positions of the item, in order."""
        meta = item.metadata
        real = len(meta.get("frame_numbers", [])) - int(meta.get("num_padded_frames", 0))
        if meta.get("source_type") == "video":
            path = Path(meta["video_path"])
            if self._video is None or self._video.path != path:
                if self._video is not None:
                    self._video.close()
                # the decoder that extracted the window (every backend turns frames the same way)
                self._video = VideoReader(path, backend=meta.get("video_backend", "auto"))
            ids = meta["frame_numbers"][:real]
            return ids, list(self._video.get_frames(ids))
        if meta.get("frame_files"):
            ids = meta["frame_numbers"][:real]
            return ids, [load_image(p) for p in meta["frame_files"][:real]]
        path = chunk_source_path(meta, self.image_root)
        if path is not None:  # an image of a chunk file
            return [0], [load_image(path)]
        raise ValueError(f"{item.name}: metadata names no source frames")

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None


def frame_label(meta: dict, frame_id: int, position: int) -> str:
    """'frame N' (frame folders) or 'frame N  t=S.SSs' (videos) for annotations."""
    if meta.get("source_type") == "video":
        return f"frame {frame_id}  t={meta['timestamps'][position]:.2f}s"
    return f"frame {frame_id}"


def write_token_pictures(item: FeatureItem, grids: np.ndarray, ids: list[int], frames: list[np.ndarray],
                         out: Path, method: str, alpha: float, with_overlay: bool = True,
                         annotate_frames: bool = False, png=write_png, overlay_at=None) -> list[Path]:
    """Per temporal token: `<method>_projection/<item>_tNN.png`, and its overlay on the token's first
    source frame in `<method>_overlay/` (placed on the crop box the features cover). `png(image,
    path) -> path` writes a picture (e.g. on a worker thread); `overlay_at(position)`, if given,
    is the overlay of the frame at that position with its own token's colours (the caller's, shared
    with its video frames)."""
    written = []
    safe_name = picture_stem(item)
    for t in range(grids.shape[0]):
        written.append(png(projection_image(grids[t]), out / f"{method}_projection" / f"{safe_name}_t{t:02d}.png"))
        if not with_overlay:
            continue
        first = min(2 * t, len(frames) - 1)  # a still image: every token overlays the same frame
        if overlay_at is not None and first == 2 * t:  # the frame's own token (not a still image's)
            picture = overlay_at(first)
        else:
            picture = overlay(frames[first], grids[t], item.metadata.get("crop_box"), alpha)
        if annotate_frames:
            picture = annotate(picture, frame_label(item.metadata, ids[first], first))
        written.append(png(picture, out / f"{method}_overlay" / f"{safe_name}_t{t:02d}.png"))
    return written


# --------------------------------------------------------------------------- visualize_embeddings.py's run

FEATURE_SUFFIXES = (".pt", ".safetensors")
CHUNK_SOURCE_HINT = "pass --image_root <the folder given to vjepa2_extractor.py --image_dir>, or --no_overlay"


def expand_inputs(entries: list[str]) -> list[Path]:
    """Feature files named or inside the folders named (not recursively), each read once."""
    files = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in FEATURE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise ConfigError(f"{path}: no .pt or .safetensors feature files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such feature file or folder")
    unique, seen = [], set()
    for path in files:  # a file given twice (itself and its folder) would be drawn twice, onto the same files
        key = path.resolve()
        if key in seen:
            logger.warning("%s: given more than once, read once", path)
            continue
        seen.add(key)
        unique.append(path)
    return unique


def check_chunk_sources(scan: InputScan, image_root: Path | None) -> None:
    """Image chunks none of whose source images can be found: the option is missing or wrong, not
    the images (one line before the fit, instead of one error per image after it)."""
    if scan.chunk_items == 0 or scan.chunk_found:
        return
    chunk, missing = scan.first_missing
    if image_root is None:
        raise ConfigError(f"{chunk}: source images of this image chunk not found relative to the current "
                          f"folder (e.g. {missing}); {CHUNK_SOURCE_HINT}")
    raise ConfigError(f"{chunk}: source images of this image chunk not found under --image_root {image_root} "
                      f"(e.g. {missing}); {CHUNK_SOURCE_HINT}")


def warn_clashes(scan: InputScan, out: Path, shown: int = 3) -> None:
    """Once per pair of inputs whose items have the same names, so write the same picture files (the
    first few pairs: windows of two runs clash file by file)."""
    pairs = list(scan.clashes.items())
    for (earlier, later), names in pairs[:shown]:
        both = f"{earlier} and {later}" if earlier != later else f"{earlier}"
        logger.warning("%s: %d item(s) with the same picture names (e.g. %s) write the same files in %s; "
                       "the pictures of the later input replace the earlier", both, len(names), names[0], out)
    if len(pairs) > shown:
        logger.warning("... and %d more pairs of inputs that write the same picture files",
                       len(pairs) - shown)


@dataclass
class DrawnPictures:
    written: set  # distinct files: inputs with the same item names write the same ones
    failed: int  # items drawn without an overlay (no source frames)
    chunk_missing: int  # of those, image-chunk items whose image was not found


def draw_pictures(files: list[Path], projection: Projection, out: Path, method: str, alpha: float,
                  image_root: Path | None, overlays: bool = True, annotate_frames: bool = False) -> DrawnPictures:
    """Every item's projection PNGs (and overlays on its frames) under `out`; a moved source still
    gets its projection."""
    started, transform_s = time.perf_counter(), 0.0
    source = FrameSource(image_root)
    drawn = DrawnPictures(set(), 0, 0)
    for item in tqdm(iter_feature_items(files), unit="item", desc="pictures", disable=None):
        start = time.perf_counter()
        grids = token_grids(item, projection)
        transform_s += time.perf_counter() - start
        ids, frames = [], []
        if overlays:
            try:
                ids, frames = source.frames(item)
            except (ValueError, OSError) as exc:  # a moved source: still draw the projection
                logger.error("%s: no overlay (%s)", item.name, exc)
                drawn.failed += 1
                if isinstance(exc, FileNotFoundError) and chunk_source_path(item.metadata, None) is not None:
                    drawn.chunk_missing += 1
        with outputs_written(out):
            drawn.written.update(write_token_pictures(item, grids, ids, frames, out, method, alpha,
                                                      with_overlay=bool(frames), annotate_frames=annotate_frames))
    source.close()
    logger.info("pictures drawn in %.1f s (%.1f s of it projecting tokens to colours)",
                time.perf_counter() - started, transform_s)
    return drawn
