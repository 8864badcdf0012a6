"""The 2-D map of a table's rows (PCA→UMAP of their pooled vectors), saved next to the table and
reused while the table and the settings are unchanged."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from src.embeddings_table import part_files
from src.projection import fit_projection

logger = logging.getLogger(__name__)

LAYOUT_FILE = "layout-2d.npz"
LAYOUT_FORMAT = "vjepa2-table-layout-v1"
# UMAP is fitted on at most this many rows; the others are placed by its transform
DEFAULT_FIT_ROWS = 20_000
# below this many rows a UMAP neighbour graph says little: the map is the first two PCA components
MIN_UMAP_ROWS = 10


def layout_key(table_dir: str | os.PathLike, positions: np.ndarray, fit_rows: int, seed: int) -> str:
    """What the layout depends on: every part file (name, size, mtime), the rows shown, the settings."""
    parts = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in part_files(table_dir)]
    rows = hashlib.sha256(np.ascontiguousarray(positions, np.int64).tobytes()).hexdigest()
    text = json.dumps({"format": LAYOUT_FORMAT, "parts": parts, "rows": rows, "fit_rows": fit_rows, "seed": seed})
    return hashlib.sha256(text.encode()).hexdigest()


def fit_layout(vectors: np.ndarray, fit_rows: int = DEFAULT_FIT_ROWS, seed: int = 0) -> np.ndarray:
    """float32 [n, 2] map of `vectors` [n, D]: UMAP (cosine, PCA-initialised) fitted on up to
    `fit_rows` of them, sampled with `seed`, the rest transformed; PCA for tiny tables."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 2:
        return np.zeros((n, 2), np.float32)
    if n < MIN_UMAP_ROWS:
        components = min(2, n, vectors.shape[1])
        proj = fit_projection(vectors, method="pca", n_components=components, seed=seed)
        xy = proj.transform(vectors)
        return np.pad(xy, ((0, 0), (0, 2 - components))).astype(np.float32)
    fitted = np.arange(n) if n <= fit_rows else np.sort(np.random.default_rng(seed).choice(n, fit_rows, replace=False))
    proj = fit_projection(vectors[fitted], method="umap", n_components=2, seed=seed)
    xy = np.empty((n, 2), np.float32)
    xy[fitted] = proj.umap_model.embedding_  # the fitted rows keep their place in the fit itself
    rest = np.setdiff1d(np.arange(n), fitted)
    if len(rest):
        xy[rest] = proj.transform(vectors[rest])
    return xy


def table_layout(table_dir: str | os.PathLike, positions: np.ndarray, vectors: np.ndarray,
                 fit_rows: int = DEFAULT_FIT_ROWS, seed: int = 0) -> tuple[np.ndarray, bool]:
    """(map [n, 2], reused?) of the rows at `positions`: read from ``<table_dir>/layout-2d.npz`` when
    it was made from the same table and settings, else fitted and saved there (a folder that cannot
    be written only costs the reuse)."""
    path = Path(table_dir) / LAYOUT_FILE
    key = layout_key(table_dir, positions, fit_rows, seed)
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["key"]) == key and saved["xy"].shape == (len(positions), 2):
                logger.info("map of %d rows reused from %s", len(positions), path)
                return saved["xy"].astype(np.float32), True
    except (OSError, ValueError, KeyError):
        pass  # none yet, or unreadable: fit again
    xy = fit_layout(vectors, fit_rows, seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), xy=xy)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("%s: could not save the map for reuse (%s)", path, exc.strerror or exc)
    finally:
        tmp.unlink(missing_ok=True)
    return xy, False
