"""Run-wide projections of token features to 3-D and false colours.

One projection (PCA or PCA→UMAP) is fitted once on a token sample drawn from all
windows of a run, then applied to every token of every window, so a colour means
the same thing in every frame. Fitting sees only the sample and transforming
works window by window, so memory does not grow with the number of windows.

Everything is deterministic: the same features and seed give byte-identical colours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from src.jit_cache import compile_time, import_umap

logger = logging.getLogger(__name__)

METHODS = ("pca", "umap")
PERCENTILES = (1.0, 99.0)
# Rows per matmul block in transform: bounds the float64 temporaries.
_CHUNK_ROWS = 8192
_NPZ_FORMATS = ("vjepa2-projection-pca-v1", "vjepa2-projection-v2")  # v2 adds UMAP; v1 still loads
# Fit samples up to this size get exact neighbours (blocked matrix products, ~M^2 x 50 flops)
# passed to UMAP as precomputed: no NN-descent, so none of pynndescent's kernels to compile.
EXACT_KNN_MAX_SAMPLE = 30_000
# Rows per UMAP.transform call: bounds its graph temporaries. (With n_epochs set, as
# fit_projection does, transform runs n_epochs // 3 epochs whatever the batch size.)
_UMAP_CHUNK_ROWS = 4096
# Tokens merged into the running sample at a time (bounds sample_tokens' overhead).
_SAMPLE_BLOCK = 4096


# --------------------------------------------------------------------------- inputs


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of an array or torch tensor (any device, any float dtype)."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    """Flatten leading dimensions: ``[..., D] -> [N, D]``."""
    if x.ndim < 2:
        raise ValueError(f"{what}: expected features [N, D], got shape {list(x.shape)}")
    return x.reshape(-1, x.shape[-1])


def _load_source(source: Any) -> np.ndarray:
    if isinstance(source, (str, os.PathLike)):
        from src.features import load_features

        return _as_2d(_to_numpy(load_features(source)["features"]), str(source))
    return _as_2d(_to_numpy(source), "source")


def sample_tokens(sources: Iterable[Any], sample_size: int, seed: int = 0) -> np.ndarray:
    """A deterministic, uniform token sample ``[M, D]`` float32 from many windows.

    ``sources``: any iterable (a generator is fine) of feature-file paths
    (``.pt``/``.safetensors``, read with :func:`src.features.load_features`) or of
    arrays/tensors ``[N, D]`` (leading dimensions are flattened).

    Scheme (one pass, "bottom-k"): source ``i`` gives each of its tokens a random key
    from ``np.random.default_rng([seed, i])``; the ``sample_size`` tokens with the
    smallest keys over all sources are kept. That is a uniform sample without
    replacement, so each source contributes in proportion to its token count
    (in expectation); the result is returned in source order, then token order.
    Same sources + seed give the same sample. If the total is ≤ ``sample_size``
    every token is taken. Memory: ``sample_size`` + 4096 rows plus one source,
    whatever the number of sources.
    """
    if sample_size < 1:
        raise ValueError(f"sample_size must be >= 1, got {sample_size}")
    buf: np.ndarray | None = None  # kept rows, then room for one incoming block
    keys = np.empty(sample_size + _SAMPLE_BLOCK, dtype=np.float64)
    filled = total = 0
    for i, source in enumerate(sources):
        feats = _load_source(source)
        if buf is None:
            # Full capacity at once: np.empty commits pages only as rows are written,
            # so a large sample_size costs nothing until the tokens are there.
            buf = np.empty((sample_size + _SAMPLE_BLOCK, feats.shape[1]), dtype=np.float32)
        elif feats.shape[1] != buf.shape[1]:
            raise ValueError(
                f"sample_tokens: source {i} has D={feats.shape[1]}, earlier sources D={buf.shape[1]}"
            )
        total += feats.shape[0]
        source_keys = np.random.default_rng([seed, i]).random(feats.shape[0])
        for start in range(0, feats.shape[0], _SAMPLE_BLOCK):
            block = np.arange(start, min(start + _SAMPLE_BLOCK, feats.shape[0]))
            if filled == sample_size:
                # Full: only keys under the current k-th smallest can get in.
                block = block[source_keys[block] < keys[:filled].max()]
            end = filled + block.size
            buf[filled:end] = feats[block]  # casts fp16 -> float32
            keys[filled:end] = source_keys[block]
            filled = end
            if filled > sample_size:
                filled = _keep_smallest(buf, keys, filled, sample_size)
        del feats
    if buf is None:
        raise ValueError("sample_tokens: no sources given")
    buf.resize((filled, buf.shape[1]), refcheck=False)  # gives the spare capacity back, no copy
    logger.debug("sampled %d of %d tokens from %d sources", filled, total, i + 1)
    return buf


def _keep_smallest(buf: np.ndarray, keys: np.ndarray, filled: int, k: int) -> int:
    """Compact the ``k`` rows with the smallest keys to the front, in order, in place."""
    keep = np.sort(np.argpartition(keys[:filled], k - 1)[:k])
    # keep is increasing with keep[j] >= j, so moving blocks front to back never
    # overwrites a row a later block still has to read; no full-size temporary.
    for start in range(0, k, 1024):
        idx = keep[start : start + 1024]
        buf[start : start + idx.size] = buf[idx]
        keys[start : start + idx.size] = keys[idx]
    return k


# --------------------------------------------------------------------------- PCA


def _fixed_sign(components: np.ndarray) -> np.ndarray:
    """Flip each row so its largest-magnitude loading is positive.

    An eigenvector's sign is arbitrary and differs between SVD solvers; pinning it
    makes colours independent of the solver (first index wins an exact tie).
    """
    components = np.array(components, dtype=np.float64, copy=True)
    rows = np.arange(components.shape[0])
    signs = np.sign(components[rows, np.argmax(np.abs(components), axis=1)])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def one_blas_thread():
    """numpy's BLAS on one thread for the projection's small products and eigh: OpenBLAS's
    spinning worker threads, next to torch's, made a 1024 x 1024 eigh 3x slower on 2 busy cores
    (and one thread makes the sums' order independent of the core count)."""
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    return threadpool_limits(limits=1, user_api="blas")


# The last exact PCA fit: (sample digest, solver, seed) -> (components fitted, mean, components, evr).
# A run fits UMAP (50 components) then PCA (3) on the same sample; exact solvers compute every
# component whatever `n_components`, row by row the same, so the second fit is a slice of the first.
_LAST_EXACT_PCA: dict = {}
_EXACT_SOLVERS = ("full", "covariance_eigh")


def _fit_pca(sample: np.ndarray, n_components: int, svd_solver: str, seed: int):
    import sklearn
    from sklearn.decomposition import PCA

    version = re.match(r"(\d+)\.(\d+)", sklearn.__version__)
    if svd_solver == "covariance_eigh" and version and tuple(map(int, version.groups())) < (1, 5):
        svd_solver = "full"
    key = None
    if svd_solver in _EXACT_SOLVERS:
        key = (sample.shape, hashlib.blake2b(np.ascontiguousarray(sample).data, digest_size=16).hexdigest(),
               svd_solver, seed)
        cached = _LAST_EXACT_PCA.get(key)
        if cached is not None and cached[0] >= n_components:
            _, mean, components, evr = cached
            return mean.copy(), components[:n_components].copy(), evr[:n_components].copy()
    # float64 fit: solvers then agree to far below one grey level.
    pca = PCA(n_components=n_components, svd_solver=svd_solver, random_state=seed)
    with one_blas_thread():
        pca.fit(sample.astype(np.float64))
    result = pca.mean_.astype(np.float64), _fixed_sign(pca.components_), pca.explained_variance_ratio_
    if key is not None:
        _LAST_EXACT_PCA.clear()
        _LAST_EXACT_PCA[key] = (n_components, *result)
    return tuple(np.copy(r) for r in result)


# --------------------------------------------------------------------------- projection


class Projection:
    """A fitted PCA or PCA→UMAP projection with fixed colour scaling.

    Build with :func:`fit_projection`. ``mean``/``components`` are the PCA stage
    (float64, sign-fixed); ``lo``/``hi`` the per-component 1st/99th percentiles of
    the fitted sample's projection, used for every later colour.
    """

    def __init__(
        self,
        method: str,
        mean: np.ndarray,
        components: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        umap_model: Any = None,
        params: dict | None = None,
        explained_variance_ratio: np.ndarray | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown projection method {method!r} (use {METHODS})")
        if method == "umap" and umap_model is None:
            raise ValueError("a UMAP projection needs its fitted umap model")
        self.method = method
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.lo = np.asarray(lo, dtype=np.float64)
        self.hi = np.asarray(hi, dtype=np.float64)
        self.umap_model = umap_model
        self.params = dict(params or {})
        self.explained_variance_ratio = (
            None if explained_variance_ratio is None else np.asarray(explained_variance_ratio)
        )

    # ----------------------------------------------------------------- basics

    @property
    def n_features(self) -> int:
        """Input feature size D."""
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        """Output dimensions of :meth:`transform`."""
        return int(self.lo.shape[0])

    def __repr__(self) -> str:
        return f"Projection(method={self.method!r}, D={self.n_features}, n_components={self.n_components})"

    def _check(self, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        x = _to_numpy(x)
        if x.ndim < 1 or x.shape[-1] != self.n_features:
            raise ValueError(
                f"projection fitted on D={self.n_features}, got features of shape {list(x.shape)}"
            )
        return _as_2d(x, "features"), x.shape[:-1]

    def _pca(self, x2d: np.ndarray) -> np.ndarray:
        """``(x - mean) @ components.T`` in float64 blocks, returned as float32."""
        out = np.empty((x2d.shape[0], self.components.shape[0]), dtype=np.float32)
        for start in range(0, x2d.shape[0], _CHUNK_ROWS):
            block = x2d[start : start + _CHUNK_ROWS].astype(np.float64) - self.mean
            out[start : start + _CHUNK_ROWS] = block @ self.components.T
        return out

    def _umap(self, reduced: np.ndarray) -> np.ndarray:
        """UMAP-transform PCA-reduced rows in fixed-size chunks, each led by the anchor row."""
        out = np.empty((reduced.shape[0], self.n_components), dtype=np.float32)
        # Training row 0 is its own exact neighbour at distance 0, i.e. weight 1 (see
        # _pin_umap_transform); leading every chunk with it pins the batch maximum.
        anchor = self.umap_model._raw_data[:1]
        with compile_time("UMAP transform"):
            for start in range(0, reduced.shape[0], _UMAP_CHUNK_ROWS):
                block = np.concatenate([anchor, reduced[start : start + _UMAP_CHUNK_ROWS]])
                out[start : start + _UMAP_CHUNK_ROWS] = _umap_call(self.umap_model, block)[1:]
        return out

    # ----------------------------------------------------------------- public

    def transform(self, x: Any) -> np.ndarray:
        """Project features ``[..., D]`` (array or tensor, any float dtype) to float32 ``[..., k]``."""
        x2d, lead = self._check(x)
        if x2d.shape[0] == 0:
            return np.empty((*lead, self.n_components), dtype=np.float32)
        with one_blas_thread():
            proj = self._pca(x2d)
            if self.method == "umap":
                proj = self._umap(proj)
        return proj.reshape(*lead, self.n_components)

    def scale(self, proj: np.ndarray) -> np.ndarray:
        """``clip((proj - lo) / (hi - lo), 0, 1)`` with the fit-time lo/hi (float64)."""
        proj = np.asarray(proj, dtype=np.float64)
        k = proj.shape[-1]
        span = self.hi[:k] - self.lo[:k]
        span = np.where(span > 0, span, 1.0)  # constant component: avoid 0/0
        return np.clip((proj - self.lo[:k]) / span, 0.0, 1.0)

    def to_rgb(self, proj: np.ndarray) -> np.ndarray:
        """uint8 ``[..., 3]`` from the first three projected components."""
        proj = np.asarray(proj)
        if proj.shape[-1] < 3:
            raise ValueError(f"to_rgb needs 3 components, got {proj.shape[-1]}")
        return np.rint(self.scale(proj[..., :3]) * 255.0).astype(np.uint8)

    def pca_turbo(self, proj: np.ndarray) -> np.ndarray:
        """uint8 ``[..., 3]``: component 1, scaled by its fit-time lo/hi, through "turbo"."""
        t = self.scale(np.asarray(proj)[..., :1])[..., 0]
        return _turbo_lut()[np.rint(t * 255.0).astype(np.intp)]

    def colors(self, x: Any) -> np.ndarray:
        """False colours uint8 ``[..., 3]`` for features ``[..., D]``."""
        return self.to_rgb(self.transform(x))

    def turbo_colors(self, x: Any) -> np.ndarray:
        """Turbo colours uint8 ``[..., 3]`` of component 1 (meant for PCA; works for UMAP too)."""
        return self.pca_turbo(self.transform(x))

    # ----------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the projection as ``.npz`` (arrays and JSON only, no pickle), atomically.

        A UMAP projection is stored as what its transform needs: the PCA-reduced fit sample, its
        embedding and the curve parameters a/b; :meth:`load` rebuilds the model from them, and
        its colours are byte-identical to the fitted one's.
        """
        path = Path(path)
        arrays = {
            "format": np.array(_NPZ_FORMATS[-1]), "method": np.array(self.method), "mean": self.mean,
            "components": self.components, "lo": self.lo, "hi": self.hi,
            "explained_variance_ratio": (
                np.array([]) if self.explained_variance_ratio is None else self.explained_variance_ratio
            ),
            "params": np.array(json.dumps(self.params)),
        }
        if self.method == "umap":
            if self.params.get("metric") not in _ExactKNN.METRICS:
                # its transform needs pynndescent's search index, which only pickle can store
                raise NotImplementedError(f"saving a UMAP projection with metric {self.params.get('metric')!r} "
                                          f"(only {_ExactKNN.METRICS} can be saved); refit it from a sample")
            arrays.update(umap_raw_data=np.asarray(self.umap_model._raw_data, dtype=np.float32),
                          umap_embedding=np.asarray(self.umap_model.embedding_, dtype=np.float32),
                          umap_ab=np.array([self.umap_model._a, self.umap_model._b], dtype=np.float64))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz"
                np.savez(handle, **arrays)
            os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Projection":
        """Read a projection written by :meth:`save` (ValueError if the file is not one)."""
        path = Path(path)
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a saved projection ({exc})") from None
        with data:
            if "format" not in data or str(data["format"]) not in _NPZ_FORMATS:
                raise ValueError(f"{path}: not a saved projection")
            method, params = str(data["method"]), json.loads(str(data["params"]))
            umap_model = None
            if method == "umap":
                umap_model = _rebuild_umap(params, data["umap_raw_data"], data["umap_embedding"], data["umap_ab"])
            evr = data["explained_variance_ratio"]
            return cls(
                method=method,
                mean=data["mean"],
                components=data["components"],
                lo=data["lo"],
                hi=data["hi"],
                umap_model=umap_model,
                params=params,
                explained_variance_ratio=evr if evr.size else None,
            )


def _umap_estimator(params: dict) -> Any:
    """An unfitted ``umap.UMAP`` with the settings in a projection's ``params``."""
    umap = import_umap()
    return umap.UMAP(n_components=params["n_components"], n_neighbors=params["n_neighbors"],
                     min_dist=params["min_dist"], metric=params["metric"], random_state=params["seed"],
                     transform_seed=params["seed"], n_epochs=params.get("n_epochs"),
                     init=params.get("init", "spectral"))


def _rebuild_umap(params: dict, raw_data: np.ndarray, embedding: np.ndarray, ab: np.ndarray) -> Any:
    """A UMAP model ready to transform, from the arrays :meth:`Projection.save` stored: the
    attributes ``UMAP.fit`` leaves that ``UMAP.transform`` reads (umap-learn 0.5)."""
    model = _umap_estimator(params)
    model._raw_data = np.ascontiguousarray(raw_data, dtype=np.float32)
    model.knn_indices = model.knn_dists = model.knn_search_index = None
    model._initial_alpha = model.learning_rate
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        model._validate_parameters()  # metric functions, disconnection distance, …
    model.embedding_ = np.ascontiguousarray(embedding, dtype=np.float32)
    model._a, model._b = float(ab[0]), float(ab[1])
    model._n_neighbors = params["n_neighbors"]
    model._sparse_data = False
    _pin_umap_transform(model, params["metric"])
    return model


def _init_graph_transform(graph: Any, embedding: np.ndarray) -> np.ndarray:
    """What ``umap.umap_.init_graph_transform`` computes, vectorised (it loops over rows in Python:
    ~0.5 ms a token, most of a transform's time): each new token starts at the weighted mean of its
    neighbours' embedding positions, at a neighbour's position when its weight is exactly 1 (the
    token is in the fit sample), NaN without neighbours. Per row, so independent of batch-mates."""
    graph = graph.tocsr()
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))  # [nnz] row of each edge
    weights = graph.data.astype(np.float64)
    row_sum = np.bincount(rows, weights=weights, minlength=graph.shape[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.zeros((graph.shape[0], embedding.shape[1]), dtype=np.float64)
        np.add.at(result, rows, (weights / row_sum[rows])[:, None] * embedding[graph.indices])
    exact = np.nonzero(graph.data == 1)[0]
    exact_rows, first = np.unique(rows[exact], return_index=True)  # the first weight-1 edge of a row
    result[exact_rows] = embedding[graph.indices[exact[first]]]
    result[row_sum == 0] = np.nan
    return result.astype(np.float32)


def _umap_call(model: Any, x: np.ndarray) -> np.ndarray:
    """``model.transform(x)`` as float32, on one numba thread, with the vectorised start positions."""
    import numba
    import umap.umap_

    # A seeded UMAP is meant to run single-threaded; transform does not enforce
    # that itself (fit restores the thread count), so do it here.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    slow_init = umap.umap_.init_graph_transform
    umap.umap_.init_graph_transform = _init_graph_transform  # read by UMAP.transform as a module global
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            return np.asarray(model.transform(x), dtype=np.float32)
    finally:
        umap.umap_.init_graph_transform = slow_init
        numba.set_num_threads(threads)


class _ExactKNN:
    """Exact nearest neighbours, standing in for UMAP's pynndescent search index.

    pynndescent's query shares one RNG state across the query batch, so a
    token's neighbours can depend on its batch-mates; an exact brute-force search
    (cheap: a few thousand queries against a ~10^4 x 50 sample) is per-row.
    """

    METRICS = ("cosine", "euclidean")
    _angular_trees = False  # read by UMAP.transform only to pick a search epsilon

    def __init__(self, data: np.ndarray, metric: str):
        if metric not in self.METRICS:
            raise ValueError(f"exact search supports {self.METRICS}, not {metric!r}")
        self.metric = metric
        self.data = np.asarray(data, dtype=np.float32)
        data64 = self.data.astype(np.float64)
        norms = np.linalg.norm(data64, axis=1)
        if metric == "cosine":
            self._ref = data64 / np.where(norms > 0, norms, 1.0)[:, None]
        else:
            self._ref = data64
            self._sq = norms**2

    def query(self, x: np.ndarray, k: int, epsilon: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        k = min(k, self.data.shape[0])
        indices = np.empty((x.shape[0], k), dtype=np.int32)
        dists = np.empty((x.shape[0], k), dtype=np.float32)
        for start in range(0, x.shape[0], 1024):  # bounds the [rows, M] float64 block
            q = x[start : start + 1024].astype(np.float64)
            norms = np.linalg.norm(q, axis=1)
            if self.metric == "cosine":
                dist = 1.0 - (q / np.where(norms > 0, norms, 1.0)[:, None]) @ self._ref.T
            else:
                dist = np.sqrt(np.maximum(norms[:, None] ** 2 + self._sq - 2.0 * q @ self._ref.T, 0.0))
            dist = np.maximum(dist, 0.0)
            idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
            part = np.take_along_axis(dist, idx, axis=1)
            order = np.lexsort((idx, part), axis=1)  # by distance, ties by index
            idx = np.take_along_axis(idx, order, axis=1)
            part = np.take_along_axis(part, order, axis=1)
            # Rounding must not keep a token away from its own copy in the sample.
            same = (x[start : start + 1024] == self.data[idx[:, 0]]).all(axis=1)
            part[same, 0] = 0.0
            indices[start : start + 1024] = idx
            dists[start : start + 1024] = part
        return indices, dists


def _pin_umap_transform(model: Any, metric: str) -> None:
    """Make ``model.transform`` per-token: a token's result ignores its batch-mates.

    Three things in umap-learn 0.5 couple a batch: (1) the fit input's hash makes
    ``transform`` return the training embedding instead of transforming; (2) the
    approximate neighbour search shares an RNG across queries; (3) edge weights
    are normalised by the batch maximum (and edges under max/n_epochs dropped).
    We clear the hash, swap in an exact search, and (in ``Projection._umap``)
    lead every chunk with training row 0, whose weight to itself is exactly 1,
    the largest possible, so the maximum is always 1.
    """
    model._input_hash = None
    if metric in _ExactKNN.METRICS:
        model._knn_search_index = _ExactKNN(model._raw_data, metric)
        model._small_data = False  # route transform through the search index
    else:
        logger.warning("metric %r: approximate UMAP neighbour search; colours may depend "
                       "slightly on how tokens are batched", metric)


_TURBO: np.ndarray | None = None


def _turbo_lut() -> np.ndarray:
    """matplotlib's 256-entry "turbo" table as uint8 ``[256, 3]``."""
    global _TURBO
    if _TURBO is None:
        import matplotlib

        rgba = matplotlib.colormaps["turbo"](np.arange(256))
        _TURBO = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    return _TURBO


def fit_projection(
    sample: Any,
    method: str = "umap",
    n_components: int = 3,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    pca_dim: int = 50,
    seed: int = 0,
    svd_solver: str = "covariance_eigh",
    n_epochs: int = 200,
    init: str = "pca",
) -> Projection:
    """Fit a projection on a token sample ``[M, D]`` (e.g. from :func:`sample_tokens`).

    ``pca``: ``n_components`` sign-fixed principal components. ``umap``: PCA to
    ``min(pca_dim, D, M)`` dims, then UMAP to ``n_components`` (seeded, so
    single-threaded and reproducible; ``n_epochs`` layout epochs, UMAP's own choice for
    samples over 10 000 tokens, fixed so that a smaller sample does not cost 2.5x more (UMAP
    would take 500), and ``n_epochs // 3`` for every transformed batch). ``init`` is UMAP's
    starting layout: "pca" (the top components of the PCA-reduced sample, nearly free) rather
    than UMAP's "spectral", whose eigensolves took 1.8 s of a 6 s fit of 4096 tokens here (one per
    disconnected part of the neighbour graph: 34 on random-weight features). Samples of up to
    ``EXACT_KNN_MAX_SAMPLE`` tokens get exact neighbours instead of NN-descent. Colour scaling (1st/99th percentiles of
    the sample's projection) is fixed here. ``svd_solver`` goes to sklearn's PCA;
    the default "covariance_eigh" (exact, D x D memory) falls back to "full" on
    scikit-learn < 1.5, which lacks it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r} (use {METHODS})")
    sample = _as_2d(_to_numpy(sample), "sample").astype(np.float32, copy=False)
    m, d = sample.shape
    if m < 2:
        raise ValueError(f"need at least 2 sample tokens to fit, got {m}")
    started = time.perf_counter()
    params = {
        "method": method, "n_components": n_components, "seed": seed, "svd_solver": svd_solver,
        "sample_size": m,
    }

    if method == "pca":
        if not 1 <= n_components <= min(m, d):
            raise ValueError(f"n_components={n_components} must be in 1..{min(m, d)}")
        mean, components, evr = _fit_pca(sample, n_components, svd_solver, seed)
        proj = Projection("pca", mean, components, np.zeros(n_components), np.ones(n_components))
        embedding = proj._pca(sample)
        umap_model = None
    else:
        pca_dim = min(pca_dim, d, m)
        if svd_solver == "arpack":  # arpack cannot compute all components
            pca_dim = min(pca_dim, min(m, d) - 1)
        mean, components, evr = _fit_pca(sample, pca_dim, svd_solver, seed)
        reducer = Projection("pca", mean, components, np.zeros(pca_dim), np.ones(pca_dim))
        reduced = reducer._pca(sample)
        logger.info("PCA %d -> %d dims: %.1f s", d, pca_dim, time.perf_counter() - started)
        if n_neighbors > m - 1:
            logger.warning("n_neighbors=%d > sample size - 1; using %d", n_neighbors, m - 1)
            n_neighbors = m - 1
        params.update(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, pca_dim=pca_dim, n_epochs=n_epochs,
                      init=init)
        umap_model = _umap_estimator(params)
        if m <= EXACT_KNN_MAX_SAMPLE and metric in _ExactKNN.METRICS:
            step = time.perf_counter()
            # exact neighbours (each token first, at distance 0, as UMAP's own search returns them)
            with one_blas_thread():
                indices, dists = _ExactKNN(reduced, metric).query(reduced, n_neighbors)
            umap_model.precomputed_knn = (indices, dists, None)
            logger.info("exact %d-NN of %d tokens: %.1f s", n_neighbors, m, time.perf_counter() - step)
        step = time.perf_counter()
        with compile_time("UMAP fit"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # ours is set right after
            umap_model.fit(reduced)
        logger.info("UMAP layout of %d tokens: %.1f s", m, time.perf_counter() - step)
        _pin_umap_transform(umap_model, metric)
        embedding = np.asarray(umap_model.embedding_, dtype=np.float32)

    lo, hi = np.percentile(embedding.astype(np.float64), PERCENTILES, axis=0)
    logger.debug("fitted %s projection on %d x %d sample", method, m, d)
    return Projection(method, mean, components, lo, hi, umap_model, params, evr)
