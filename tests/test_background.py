"""src/background.py: writes off the critical path, in order, bounded, errors never lost."""
from __future__ import annotations

import threading
import time

import pytest

from src import background
from src.background import BackgroundWriter


@pytest.mark.parametrize("max_pending", [0, 1, 4])
def test_jobs_run_in_submission_order(max_pending):
    done = []
    with BackgroundWriter(max_pending) as writer:
        for i in range(50):
            writer.submit(done.append, i)
    assert done == list(range(50))


def test_the_queue_is_bounded():
    release = threading.Event()
    started = []

    def slow(i):
        started.append(i)
        release.wait(5)

    writer = BackgroundWriter(max_pending=2)
    for i in range(3):  # one running, two waiting
        writer.submit(slow, i)
    blocked = threading.Thread(target=writer.submit, args=(slow, 3))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a fourth job was accepted while the queue was full"
    release.set()
    blocked.join(5)
    writer.close()
    assert started == [0, 1, 2, 3] and writer.waited_s > 0.2


def test_a_failed_job_is_raised_in_the_caller_and_later_jobs_never_run():
    done = []

    def fail():
        raise OSError(28, "No space left on device")

    writer = BackgroundWriter(max_pending=4)
    writer.submit(done.append, "a")
    writer.submit(fail)
    writer.submit(done.append, "after the failure")
    with pytest.raises(OSError, match="No space left"):
        writer.flush()
    writer.close()
    assert done == ["a"]


def test_an_error_surfaces_at_the_next_submit():
    writer = BackgroundWriter(max_pending=1)
    writer.submit(lambda: 1 / 0)
    time.sleep(0.2)
    with pytest.raises(ZeroDivisionError):
        writer.submit(print, "never")
    writer.close()


def test_the_caller_keeps_working_while_writes_wait(monkeypatch):
    """With every write delayed, the submitting loop's own time stays that of its work: the queue
    absorbs the delay until it is full."""
    monkeypatch.setattr(background, "DELAY_EACH_JOB_S", 0.05)
    done = []
    start = time.perf_counter()
    with BackgroundWriter(max_pending=8) as writer:
        for i in range(8):
            writer.submit(done.append, i)
        submitted = time.perf_counter() - start
    assert submitted < 0.2 and done == list(range(8))  # 8 × 50 ms of writes did not block the caller
