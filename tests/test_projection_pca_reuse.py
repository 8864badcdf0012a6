"""A run fits UMAP (PCA to 50 dims first) and PCA (3 components) on one sample: the second exact
PCA fit is a slice of the first, equal to a fit of its own."""
from __future__ import annotations

import numpy as np

from src import projection


def test_second_exact_pca_fit_is_a_slice_equal_to_its_own_fit():
    sample = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    projection._LAST_EXACT_PCA.clear()
    projection._fit_pca(sample, 50, "covariance_eigh", 0)
    reused = projection._fit_pca(sample, 3, "covariance_eigh", 0)
    assert len(projection._LAST_EXACT_PCA) == 1 and next(iter(projection._LAST_EXACT_PCA.values()))[0] == 50
    projection._LAST_EXACT_PCA.clear()
    fresh = projection._fit_pca(sample, 3, "covariance_eigh", 0)
    for a, b in zip(reused, fresh):
        assert a.shape == b.shape and np.array_equal(a, b)
    assert reused[1].shape == (3, 64)
    # another sample is fitted again, not served from the cache
    other = projection._fit_pca(sample[::-1].copy() + 1, 3, "covariance_eigh", 0)
    assert not np.array_equal(other[0], fresh[0])
