"""numba's on-disk cache for the umap-learn / pynndescent kernels, and what compiling costs.

umap-learn marks almost none of its numba functions ``cache=True``, so every new process
compiles them again (tens of seconds on a small CPU). :func:`import_umap` turns numba's on-disk
cache on for them before their first call: compiled once per machine, loaded in milliseconds
afterwards. Folder: ``$NUMBA_CACHE_DIR`` if set, else ``<user cache dir>/vjepa2/numba``
(``$XDG_CACHE_HOME`` or ``~/.cache``).

Safe with several processes starting at once: numba writes each cache file to a temporary name
and renames it into place, so a reader sees a whole file or none (two writers of the same kernel
write the same thing; the later rename wins). A folder that cannot be used (read-only, not a
folder, full) never fails a run: this process compiles in a private temporary folder instead, or
skips saving, and says so in one log line.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

from src.machine import user_cache_dir

logger = logging.getLogger(__name__)

# Modules whose numba functions the projection calls (fit, graph, layout, transform, NN-descent).
_JIT_MODULES = ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.spectral", "umap.sparse",
                "pynndescent.pynndescent_", "pynndescent.utils", "pynndescent.distances", "pynndescent.rp_trees",
                "pynndescent.hybrid_forest", "pynndescent.graph_utils", "pynndescent.sparse")
# Below this much free space a cache folder counts as full (the umap kernels take ~20 MB).
_MIN_FREE_BYTES = 64 * 2**20

_state: dict = {"dir": None, "save_failed": False, "umap": None, "prefetch": None}
# One import at a time: numba's decorators are patched while umap imports (see _cached_by_default).
_import_lock = threading.Lock()


def default_cache_dir() -> Path:
    """``$NUMBA_CACHE_DIR``, else ``<$XDG_CACHE_HOME or ~/.cache>/vjepa2/numba``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    return user_cache_dir() / "numba"


def _unusable_reason(path: Path) -> str | None:
    """Why `path` cannot hold the cache (None if it can): created if missing, a test file written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return exc.strerror or str(exc)
    if free < _MIN_FREE_BYTES:
        return f"only {free / 2**20:.0f} MiB free"
    return None


def cache_dir() -> Path:
    """The folder this process's numba cache uses, chosen (and the environment set) on first call."""
    if _state["dir"] is None:
        wanted = default_cache_dir()
        reason = _unusable_reason(wanted)
        path = wanted
        if reason is not None:
            path = Path(tempfile.mkdtemp(prefix="vjepa2-numba-"))
            logger.warning("numba cache folder %s not usable (%s): compiling UMAP in this process (set "
                           "NUMBA_CACHE_DIR to a writable folder to compile once per machine)", wanted, reason)
        # Set before numba is imported (it reads the variable then); if it already is, set its config too.
        os.environ["NUMBA_CACHE_DIR"] = str(path)
        if "numba" in sys.modules:
            sys.modules["numba"].config.CACHE_DIR = str(path)
        _state["dir"] = path
    return _state["dir"]


def _guard_cache_saves() -> None:
    """A cache file that cannot be written (disk filled up meanwhile) costs a recompile next time,
    never the run: numba itself lets the OSError out of the compile (it only guards Windows)."""
    from numba.core import caching

    if getattr(caching.Cache.save_overload, "_vjepa2_guarded", False):
        return
    save = caching.Cache.save_overload

    def guarded(self, sig, data):
        try:
            save(self, sig, data)
        except OSError as exc:
            if not _state["save_failed"]:
                logger.warning("numba cache: cannot save compiled code in %s (%s); compiling again next time",
                               cache_dir(), exc.strerror or exc)
            _state["save_failed"] = True

    guarded._vjepa2_guarded = True
    caching.Cache.save_overload = guarded


def _enable_caching(module: ModuleType) -> int:
    """Turn on the on-disk cache of every numba function of `module` that lacks it; how many."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    enabled = 0
    for value in vars(module).values():
        if isinstance(value, Dispatcher) and isinstance(value._cache, NullCache):
            try:
                value.enable_caching()
                enabled += 1
            except RuntimeError:  # numba found no folder it may write for this function
                pass
    return enabled


@contextlib.contextmanager
def _cached_by_default() -> Iterator[None]:
    """``numba.njit``/``numba.jit`` default to ``cache=True`` inside the block: kernels with a
    signature compile as they are decorated, at import, before :func:`_enable_caching` could
    reach them (umap's random-number helpers: ~2 s a process on a quiet 2-core machine)."""
    import numba

    originals = numba.njit, numba.jit

    def caching(decorator):
        def decorate(*args, **kwargs):
            kwargs.setdefault("cache", True)
            return decorator(*args, **kwargs)
        return decorate

    numba.njit, numba.jit = caching(numba.njit), caching(numba.jit)
    try:
        yield
    finally:
        numba.njit, numba.jit = originals


def import_umap() -> ModuleType:
    """``import umap`` with numba's on-disk cache on for every kernel umap/pynndescent may compile."""
    with _import_lock:
        if _state["umap"] is None:
            _state["umap"] = _import_umap_with_cache()
        return _state["umap"]


def _import_umap_with_cache() -> ModuleType:
    cache_dir()
    import importlib

    with compile_time("import umap"), _cached_by_default():
        import umap

    _guard_cache_saves()
    enabled = 0
    for name in _JIT_MODULES:
        try:
            enabled += _enable_caching(importlib.import_module(name))
        except ImportError:  # a module another umap/pynndescent version lacks: nothing to cache there
            pass
    logger.debug("numba cache %s: turned on for %d umap/pynndescent functions", cache_dir(), enabled)
    return umap


PREFETCH_SWITCH_INTERVAL_S = 0.0005


def prefetch_umap() -> threading.Thread:
    """Start importing umap (and scikit-learn, numba, the cached kernels) in a background thread.

    The import takes a few seconds even with a warm cache (~4 s on a quiet 2-core machine); a
    script that will project after a long step (extraction) starts it first, so the projection
    does not wait for it. A failed import is only logged here: :func:`import_umap` raises it
    again where the projection needs umap.
    """
    if _state["prefetch"] is None:
        # The import is Python holding the GIL for ~1.7 s; each torch or numpy call of the main
        # thread (drawing the weights, the first window) releases the GIL and then waits up to one
        # switch interval (5 ms by default) to get it back. A 0.5 ms interval while the import
        # runs: the README job's set-up (a random ViT-L's weights) 1.63-1.66 s against 1.72-1.77 s.
        previous = sys.getswitchinterval()
        interval = min(previous, PREFETCH_SWITCH_INTERVAL_S)
        sys.setswitchinterval(interval)

        def run() -> None:
            try:
                import_umap()
            except Exception as exc:  # noqa: BLE001 - re-raised by the caller's own import_umap()
                logger.debug("background import of umap failed: %s", exc)
            finally:
                if sys.getswitchinterval() == interval:  # nobody else changed it meanwhile
                    sys.setswitchinterval(previous)

        _state["prefetch"] = threading.Thread(target=run, name="import-umap", daemon=True)
        _state["prefetch"].start()
    return _state["prefetch"]


class _CompileTimer:
    """Seconds spent in numba compiles (outermost events only; nested compiles are inside them)."""

    def __init__(self):
        from numba.core import event

        class Listener(event.Listener):
            def on_start(listener, ev):
                if self.depth == 0:
                    self.started = time.perf_counter()
                self.depth += 1

            def on_end(listener, ev):
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - self.started
                    self.functions.append(ev.data["dispatcher"].py_func.__qualname__)

        self.listener = Listener()
        self.depth, self.started, self.seconds, self.functions = 0, 0.0, 0.0, []


@contextlib.contextmanager
def compile_time(what: str) -> Iterator[_CompileTimer]:
    """Measure numba compiling inside the block (compiles only: a cache load is not one) and log
    it in one line when there was any, so a user sees what is compile cost and what is work."""
    from numba.core import event

    timer = _CompileTimer()
    event.register("numba:compile", timer.listener)
    try:
        yield timer
    finally:
        event.unregister("numba:compile", timer.listener)
    if timer.functions:
        logger.info("%s: %.1f s of it compiling %d numba function(s) not yet in the cache %s (once per machine)",
                    what, timer.seconds, len(timer.functions), cache_dir())
        logger.debug("compiled: %s", ", ".join(timer.functions))
