"""Tests for src.projection: token sampling, PCA/UMAP projections and false colours."""

import matplotlib
import numpy as np
import pytest
import sklearn.decomposition
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from src import projection
from src.features import save_features
from src.projection import Projection, fit_projection, sample_tokens

DIM = 64


def _clusters(n, k=3, dim=DIM, spread=6.0, seed=0):
    """``k`` Gaussian clusters (unit noise, random centres): fp16 tokens and labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, spread, (k, dim))
    labels = rng.integers(0, k, n)
    x = centres[labels] + rng.normal(0.0, 1.0, (n, dim)) + 3.0  # offset: a non-zero mean
    return x.astype(np.float16), labels


@pytest.fixture(scope="module")
def pca_data():
    # Four clusters: three between-cluster directions with well-separated variances,
    # so every solver finds the same top-3 subspace.
    x, labels = _clusters(3000, k=4, seed=1)
    return x, labels


@pytest.fixture(scope="module")
def umap_data():
    x, labels = _clusters(2400, k=3, seed=2)
    return x, labels


@pytest.fixture(scope="module")
def umap_fit(umap_data):
    x, _ = umap_data
    sample = sample_tokens([x[:1200], x[1200:]], 1200, seed=0)
    return sample, fit_projection(sample, method="umap", seed=0)


# --------------------------------------------------------------------------- PCA


def test_pca_deterministic(pca_data):
    x, _ = pca_data
    a = fit_projection(x, method="pca")
    b = fit_projection(x, method="pca")
    assert a.colors(x).dtype == np.uint8
    assert a.colors(x).shape == (len(x), 3)
    assert a.colors(x).tobytes() == b.colors(x).tobytes()
    assert a.turbo_colors(x).tobytes() == b.turbo_colors(x).tobytes()


@pytest.mark.parametrize("solver", ["randomized", "arpack", "covariance_eigh"])
def test_pca_solver_independence(pca_data, solver):
    x, _ = pca_data
    ref = fit_projection(x, method="pca", svd_solver="full").colors(x).astype(int)
    other = fit_projection(x, method="pca", svd_solver=solver).colors(x).astype(int)
    assert np.abs(ref - other).max() <= 1


def test_pca_negated_solver_signs_give_same_colours(pca_data, monkeypatch):
    x, _ = pca_data
    ref = fit_projection(x, method="pca")

    class FlippedPCA(sklearn.decomposition.PCA):
        def fit(self, *args, **kwargs):
            super().fit(*args, **kwargs)
            self.components_ = -self.components_
            return self

    monkeypatch.setattr(sklearn.decomposition, "PCA", FlippedPCA)
    flipped = fit_projection(x, method="pca")
    assert flipped.colors(x).tobytes() == ref.colors(x).tobytes()
    assert flipped.turbo_colors(x).tobytes() == ref.turbo_colors(x).tobytes()


def test_fixed_sign_makes_largest_loading_positive():
    rng = np.random.default_rng(0)
    comps = rng.normal(size=(5, 20))
    fixed = projection._fixed_sign(comps)
    np.testing.assert_array_equal(projection._fixed_sign(-comps), fixed)
    largest = fixed[np.arange(5), np.argmax(np.abs(fixed), axis=1)]
    assert (largest > 0).all()
    assert np.allclose(np.abs(fixed), np.abs(comps))


def test_pca_transform_is_centred_projection(pca_data):
    x, _ = pca_data
    proj = fit_projection(x, method="pca", n_components=3)
    out = proj.transform(x)
    assert out.dtype == np.float32 and out.shape == (len(x), 3)
    expected = (x.astype(np.float64) - proj.mean) @ proj.components.T
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    # fp16 tensors, fp32 arrays and leading dimensions all give the same answer.
    tensor = torch.from_numpy(x)
    assert proj.colors(tensor).tobytes() == proj.colors(x).tobytes()
    grid = proj.colors(x[:24].reshape(2, 3, 4, DIM))
    assert grid.shape == (2, 3, 4, 3)
    assert grid.reshape(-1, 3).tobytes() == proj.colors(x[:24]).tobytes()
    with pytest.raises(ValueError, match="D=64"):
        proj.transform(np.zeros((4, DIM + 1), np.float32))


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_colour_of_a_token_ignores_its_batch(method, pca_data, umap_fit, umap_data):
    if method == "pca":
        x, _ = pca_data
        proj = fit_projection(x[:1000], method="pca")
    else:
        x, _ = umap_data
        proj = umap_fit[1]
    whole = proj.colors(x)
    rng = np.random.default_rng(5)
    subset = np.sort(rng.choice(len(x), 37, replace=False))
    assert proj.colors(x[subset]).tobytes() == whole[subset].tobytes()
    chunks = np.concatenate([proj.colors(x[i : i + 500]) for i in range(0, len(x), 500)])
    assert chunks.tobytes() == whole.tobytes()


def test_to_rgb_uses_fit_time_percentiles(pca_data):
    x, _ = pca_data
    proj = fit_projection(x, method="pca")
    embedded = proj.transform(x).astype(np.float64)
    np.testing.assert_allclose(proj.lo, np.percentile(embedded, 1, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(proj.hi, np.percentile(embedded, 99, axis=0), rtol=1e-5, atol=1e-5)
    lo, hi = proj.lo, proj.hi
    probe = np.stack([lo, hi, lo - 10, hi + 10, (lo + hi) / 2])
    rgb = proj.to_rgb(probe)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1], [255, 255, 255])
    np.testing.assert_array_equal(rgb[2], [0, 0, 0])
    np.testing.assert_array_equal(rgb[3], [255, 255, 255])
    assert np.all(np.abs(rgb[4].astype(int) - 128) <= 1)
    # Only ~2% of the fitted tokens can saturate per component and side.
    colours = proj.colors(x)
    assert ((colours == 0).mean(axis=0) < 0.03).all()
    assert ((colours == 255).mean(axis=0) < 0.03).all()


def test_turbo_extremes_map_to_colormap_ends(pca_data):
    x, _ = pca_data
    proj = fit_projection(x, method="pca")
    turbo = matplotlib.colormaps["turbo"]
    first = np.rint(np.array(turbo(0)[:3]) * 255).astype(np.uint8)
    last = np.rint(np.array(turbo(255)[:3]) * 255).astype(np.uint8)
    probe = np.zeros((4, 3))
    probe[:, 0] = [proj.lo[0], proj.hi[0], proj.lo[0] - 5, proj.hi[0] + 5]
    out = proj.pca_turbo(probe)
    assert out.dtype == np.uint8 and out.shape == (4, 3)
    np.testing.assert_array_equal(out[0], first)
    np.testing.assert_array_equal(out[1], last)
    np.testing.assert_array_equal(out[2], first)
    np.testing.assert_array_equal(out[3], last)
    # turbo_colors depends on component 1 only.
    emb = proj.transform(x)
    np.testing.assert_array_equal(proj.turbo_colors(x), proj.pca_turbo(emb[:, :1]))


def test_pca_save_load_roundtrip(pca_data, tmp_path):
    x, _ = pca_data
    proj = fit_projection(x, method="pca")
    path = proj.save(tmp_path / "proj.npz")
    loaded = Projection.load(path)
    assert loaded.method == "pca" and loaded.params == proj.params
    assert loaded.colors(x).tobytes() == proj.colors(x).tobytes()
    assert loaded.turbo_colors(x).tobytes() == proj.turbo_colors(x).tobytes()
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved projection"):
        Projection.load(tmp_path / "other.npz")


def test_fit_projection_rejects_bad_arguments(pca_data):
    x, _ = pca_data
    with pytest.raises(ValueError, match="unknown projection method"):
        fit_projection(x, method="tsne")
    with pytest.raises(ValueError, match="at least 2"):
        fit_projection(x[:1], method="pca")


# --------------------------------------------------------------------------- UMAP


def test_umap_same_seed_same_colours(umap_fit, umap_data):
    x, _ = umap_data
    sample, proj = umap_fit
    again = fit_projection(sample, method="umap", seed=0)
    colours = proj.colors(x)
    assert colours.shape == (len(x), 3) and colours.dtype == np.uint8
    assert again.colors(x).tobytes() == colours.tobytes()
    assert proj.transform(x).shape == (len(x), 3)
    assert proj.colors(torch.from_numpy(x[:10])).tobytes() == colours[:10].tobytes()


def test_umap_preserves_clusters(umap_fit, umap_data):
    x, labels = umap_data
    _, proj = umap_fit
    embedding = proj.transform(x)
    assert np.isfinite(embedding).all()
    predicted = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(embedding)
    assert adjusted_rand_score(labels, predicted) >= 0.9


def test_umap_save_load_gives_identical_colours(umap_fit, umap_data, tmp_path):
    x, _ = umap_data
    proj = umap_fit[1]
    path = proj.save(tmp_path / "umap.npz")
    with np.load(path, allow_pickle=False) as data:  # arrays only: loading runs no pickle
        assert data["umap_raw_data"].shape == (1200, 50) and data["umap_embedding"].shape == (1200, 3)
    loaded = Projection.load(path)
    assert loaded.method == "umap" and loaded.params == proj.params
    assert loaded.colors(x).tobytes() == proj.colors(x).tobytes()
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed into place


def test_umap_with_a_metric_only_pickle_could_store_is_not_saved(umap_fit, tmp_path):
    proj = umap_fit[1]
    other = Projection("umap", proj.mean, proj.components, proj.lo, proj.hi, proj.umap_model,
                       {**proj.params, "metric": "manhattan"})
    with pytest.raises(NotImplementedError, match="manhattan"):
        other.save(tmp_path / "umap.npz")
    assert not (tmp_path / "umap.npz").exists()


def test_umap_fit_uses_exact_neighbours_not_nn_descent(monkeypatch):
    import umap.umap_

    class Refused:
        def __init__(self, *args, **kwargs):
            raise AssertionError("NN-descent called")

    monkeypatch.setattr(umap.umap_, "NNDescent", Refused)  # UMAP's own search for samples >= 4096
    x, labels = _clusters(4200, k=3, dim=16, seed=3)
    proj = fit_projection(x, method="umap", seed=0)
    assert proj.params["n_epochs"] == 200
    predicted = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(proj.umap_model.embedding_)
    assert adjusted_rand_score(labels, predicted) >= 0.9


# --------------------------------------------------------------------------- sampling


def _tagged(counts, dim=8):
    """Sources whose column 0 names the source and column 1 the row."""
    sources = []
    for i, n in enumerate(counts):
        a = np.zeros((n, dim), np.float32)
        a[:, 0] = i
        a[:, 1] = np.arange(n)
        sources.append(a)
    return sources


def test_sample_tokens_size_dtype_and_determinism():
    sources = _tagged([500, 700, 300])
    a = sample_tokens(sources, 200, seed=3)
    b = sample_tokens(sources, 200, seed=3)
    c = sample_tokens(sources, 200, seed=4)
    assert a.shape == (200, 8) and a.dtype == np.float32
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    # No token twice, rows kept in source then file order.
    keys = a[:, 0] * 10_000 + a[:, 1]
    assert len(np.unique(keys)) == 200 and (np.diff(keys) > 0).all()


def test_sample_tokens_share_is_proportional_to_tokens():
    counts = [1000, 3000, 6000]
    shares = np.array([
        np.bincount(sample_tokens(_tagged(counts), 1000, seed=seed)[:, 0].astype(int), minlength=3)
        for seed in range(20)
    ])
    assert (shares.sum(axis=1) == 1000).all()
    # A uniform draw: each source's share is hypergeometric around its quota.
    np.testing.assert_allclose(shares.mean(axis=0), [100, 300, 600], atol=10)
    assert (np.abs(shares - [100, 300, 600]) < 60).all()


def test_sample_tokens_streams_a_generator():
    counts = [400, 50, 700, 10]
    expected = sample_tokens(_tagged(counts), 300, seed=2)
    seen = []

    def windows():
        for a in _tagged(counts):
            seen.append(len(a))
            yield torch.from_numpy(a).to(torch.float16)

    out = sample_tokens(windows(), 300, seed=2)
    assert seen == counts
    np.testing.assert_array_equal(out, expected)  # small integers: exact in fp16


def test_sample_tokens_takes_everything_when_small():
    sources = _tagged([30, 20])
    out = sample_tokens(sources, 50)
    np.testing.assert_array_equal(out, np.concatenate(sources))
    assert sample_tokens(sources, 1000).shape == (50, 8)


def test_sample_tokens_reads_feature_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays, paths = [], []
    for i, (n, fmt) in enumerate([(120, "pt"), (80, "safetensors"), (200, "pt")]):
        feats = torch.from_numpy(rng.normal(size=(n, 16)).astype(np.float16))
        record = {"features": feats, "shape": [n, 16], "dtype": "float16",
                  "model_info": {}, "metadata": {}}
        paths.append(save_features(record, tmp_path / f"w{i}.{fmt}"))
        arrays.append(feats)
    from_files = sample_tokens(paths, 100, seed=1)
    from_tensors = sample_tokens(arrays, 100, seed=1)
    from_arrays = sample_tokens([a.numpy() for a in arrays], 100, seed=1)
    assert from_files.shape == (100, 16) and from_files.dtype == np.float32
    assert from_files.tobytes() == from_tensors.tobytes() == from_arrays.tobytes()


def test_sample_tokens_rejects_bad_input():
    with pytest.raises(ValueError, match="sample_size"):
        sample_tokens(_tagged([10]), 0)
    with pytest.raises(ValueError, match="no sources"):
        sample_tokens([], 10)
    with pytest.raises(ValueError, match="D=3"):
        sample_tokens([np.zeros((5, 4)), np.zeros((5, 3))], 3)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_knn_matches_sklearn(metric):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 12)).astype(np.float32)
    query = np.concatenate([data[:5], rng.normal(size=(50, 12)).astype(np.float32)])
    idx, dist = projection._ExactKNN(data, metric).query(query, 7)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=7, metric=metric, algorithm="brute").fit(data).kneighbors(query)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    # A token that is in the sample is its own nearest neighbour at distance exactly 0.
    np.testing.assert_array_equal(idx[:5, 0], np.arange(5))
    assert (dist[:5, 0] == 0).all()


def test_umap_starts_from_the_pca_layout_not_a_spectral_one(monkeypatch):
    import umap.umap_

    def refused(*args, **kwargs):
        raise AssertionError("spectral layout called")

    # one eigensolve per disconnected part of the neighbour graph: seconds on random-weight features
    monkeypatch.setattr(umap.umap_, "spectral_layout", refused)
    x, labels = _clusters(900, k=3, dim=16, seed=5)
    proj = fit_projection(x, method="umap", seed=0)
    assert proj.params["init"] == "pca" and proj.umap_model.init == "pca"
    predicted = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(proj.umap_model.embedding_)
    assert adjusted_rand_score(labels, predicted) >= 0.9
    spectral = fit_projection(x, method="umap", seed=0, init="random")  # the option reaches UMAP
    assert spectral.umap_model.init == "random"
    assert not np.allclose(spectral.umap_model.embedding_, proj.umap_model.embedding_)
