"""Writes off the critical path: one background thread runs write jobs in the order they were
submitted, with a bounded queue, so the model never waits for an fsync and memory never grows
without bound when the disk is slower than the model.

Order is what keeps resume exact: a window's file is renamed into place before its manifest line
and table rows are written, exactly as when the writes ran inline. A job that fails stops the
writer: the error is raised in the submitting thread at its next `submit`, `flush` or `close`,
and later jobs are dropped (never run after a failed one). A process killed with jobs still queued
loses only outputs that were not yet renamed into place, which a rerun recomputes.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

# Test hook: seconds each job sleeps before it runs (a slow disk, simulated).
DELAY_EACH_JOB_S = 0.0
_STOP = object()


class BackgroundWriter:
    """Run `fn(*args)` jobs on one thread, in order, at most `max_pending` waiting.

    `max_pending=0` runs every job inline in the caller (no thread): the same semantics, for
    debugging and for callers that must not outlive a job.
    """

    def __init__(self, max_pending: int = 8, name: str = "writer"):
        self.max_pending = max_pending
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.waited_s = 0.0  # time submitters spent blocked on a full queue (the disk was the bottleneck)
        if max_pending > 0:
            self._queue = queue.Queue(maxsize=max_pending)
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        if DELAY_EACH_JOB_S:
            time.sleep(DELAY_EACH_JOB_S)
        fn(*args)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure, later jobs are dropped, never run out of order
                    try:
                        self._run(*job)
                    except BaseException as exc:  # handed to the submitting thread
                        self._error = exc
            finally:
                self._queue.task_done()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue `fn(*args)`; blocks while `max_pending` jobs wait. Raises an earlier job's error."""
        self._raise_pending()
        if self._queue is None:
            self._run(fn, args)
            return
        start = time.perf_counter()
        self._queue.put((fn, args))
        self.waited_s += time.perf_counter() - start

    def flush(self) -> None:
        """Wait until every queued job has run; raise the first error among them."""
        if self._queue is not None:
            self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            if self._thread is not None and self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        # already failing: let queued jobs finish (finished windows stay useful for resume) but keep
        # the original exception
        try:
            self.close()
        except BaseException as write_error:  # noqa: BLE001 - reported, the first error wins
            logger.error("a queued write also failed: %s", write_error)
