"""numba's on-disk cache for UMAP: processes racing on an empty cache, an unusable cache folder."""
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from src import jit_cache
from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[1]

# Fits a small UMAP projection and transforms new tokens in a fresh process; prints the colours' digest.
FIT_AND_COLOUR = """
import hashlib, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from src.projection import fit_projection
rng = np.random.default_rng(0)
x = (rng.normal(size=(600, 24)) + 5 * rng.normal(size=(3, 24))[rng.integers(0, 3, 600)]).astype(np.float32)
proj = fit_projection(x[:400], method="umap", seed=0)
print("colours", hashlib.sha256(proj.colors(x[400:]).tobytes()).hexdigest())
"""


def _start(cache_dir: Path, temp_dir: Path) -> subprocess.Popen:
    # TMPDIR: the fallback cache of an unusable folder lands in the test's own folder, not in /tmp
    env = clean_env(NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(REPO), TMPDIR=str(temp_dir))
    return subprocess.Popen([sys.executable, "-c", FIT_AND_COLOUR], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_racing_processes_and_an_unusable_cache_folder_give_the_same_colours(tmp_path):
    shared = tmp_path / "cache"  # empty: both racers compile and save the same kernels at once
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    temp = tmp_path / "tmp"
    temp.mkdir()
    procs = [_start(shared, temp), _start(shared, temp), _start(not_a_folder / "numba", temp)]
    results = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-2000:]
    digests = {out.split("colours ")[1].strip() for out, _ in results}
    assert len(digests) == 1
    assert len(list(temp.glob("vjepa2-numba-*"))) == 1  # the unusable folder's process fell back to a temp cache
    assert "compiling" in results[0][1] and "not yet in the cache" in results[0][1]  # the cost is logged
    unusable_log = results[2][1]
    assert unusable_log.count("not usable") == 1 and str(not_a_folder / "numba") in unusable_log
    assert list(shared.rglob("*.nbi")) and list(shared.rglob("*.nbc"))  # index and code files saved

    # A third process on the now-warm cache compiles nothing and colours the same.
    out, err = _start(shared, temp).communicate(timeout=600)
    assert "not yet in the cache" not in err, err[-2000:]
    assert out.split("colours ")[1].strip() in digests


def test_cache_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jit_cache.default_cache_dir() == tmp_path / "vjepa2" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert jit_cache.default_cache_dir() == tmp_path / "mine"


def test_unusable_reasons(tmp_path, monkeypatch):
    assert jit_cache._unusable_reason(tmp_path / "new" / "folder") is None and (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "f").write_text("x")
    assert jit_cache._unusable_reason(tmp_path / "f" / "sub")  # under a file: cannot be created
    monkeypatch.setattr(jit_cache, "_MIN_FREE_BYTES", 2**62)
    assert "MiB free" in jit_cache._unusable_reason(tmp_path)  # a full disk counts as unusable


def test_a_failed_cache_save_is_one_log_line_not_an_error(caplog, monkeypatch):
    import numba
    from numba.core import caching

    monkeypatch.setitem(jit_cache._state, "save_failed", False)
    jit_cache._guard_cache_saves()
    jit_cache._guard_cache_saves()  # idempotent: wrapped once

    @numba.njit(cache=True)
    def add_one(x):
        return x + 1

    def full_disk(self, sig, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(caching.Cache, "_save_overload", full_disk)
    with caplog.at_level("WARNING"):
        assert add_one(np.int64(1)) == 2 and add_one(1.5) == 2.5  # two compiles, two failed saves
    lines = [r.getMessage() for r in caplog.records if "cannot save compiled code" in r.getMessage()]
    assert len(lines) == 1 and "No space left on device" in lines[0]


def test_prefetch_imports_umap_once_in_the_background_and_a_failure_surfaces_at_use(monkeypatch):
    monkeypatch.setitem(jit_cache._state, "umap", None)
    monkeypatch.setitem(jit_cache._state, "prefetch", None)
    calls = []

    def failing_import():
        calls.append(threading.current_thread().name)
        raise ImportError("no umap here")

    monkeypatch.setattr(jit_cache, "_import_umap_with_cache", failing_import)
    thread = jit_cache.prefetch_umap()
    assert jit_cache.prefetch_umap() is thread  # one background import per process
    thread.join(timeout=60)
    assert calls == ["import-umap"] and not thread.is_alive()  # it ran there, and did not raise there
    with pytest.raises(ImportError, match="no umap here"):
        jit_cache.import_umap()  # the caller sees the failure where it needs umap

    import umap
    monkeypatch.setattr(jit_cache, "_import_umap_with_cache", lambda: calls.append("ok") or umap)
    monkeypatch.setitem(jit_cache._state, "prefetch", None)
    jit_cache.prefetch_umap().join(timeout=60)
    assert jit_cache.import_umap() is umap and jit_cache.import_umap() is umap
    assert calls.count("ok") == 1  # imported once, then reused


def test_prefetch_shortens_the_switch_interval_while_it_imports_and_restores_it(monkeypatch):
    """The background import holds the GIL; while it runs the interpreter switches threads every
    0.5 ms so the main thread's torch/numpy calls get it back quickly, and afterwards as before."""
    monkeypatch.setitem(jit_cache._state, "umap", None)
    monkeypatch.setitem(jit_cache._state, "prefetch", None)
    before = sys.getswitchinterval()
    seen, release = [], threading.Event()

    def slow_import():
        seen.append(sys.getswitchinterval())
        release.wait(timeout=60)
        raise ImportError("not needed here")

    monkeypatch.setattr(jit_cache, "_import_umap_with_cache", slow_import)
    thread = jit_cache.prefetch_umap()
    assert sys.getswitchinterval() == pytest.approx(min(before, jit_cache.PREFETCH_SWITCH_INTERVAL_S))
    release.set()
    thread.join(timeout=60)
    assert seen == [pytest.approx(min(before, jit_cache.PREFETCH_SWITCH_INTERVAL_S))]
    assert sys.getswitchinterval() == pytest.approx(before)
