"""The interval fsync policy: acknowledged once written, fsynced within the interval."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.spool import Spool
from agent.syncer import IntervalSync


def _entries(n: int) -> list[tuple[str, bytes, bytes]]:
    return [("t.training", b"k", b"value-%06d" % i) for i in range(n)]


class _FsyncSpy:
    """Counts os.fsync calls and the threads they come from."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = os.fsync

        def spy(fd: int) -> None:
            self.calls.append(threading.current_thread().name)
            real(fd)

        monkeypatch.setattr(os, "fsync", spy)

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"only {len(self.calls)} fsyncs after {timeout}s"
            time.sleep(0.005)


def _opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: object
) -> tuple[_FsyncSpy, Spool]:
    spy = _FsyncSpy(monkeypatch)
    spool = Spool(tmp_path, **kw)  # type: ignore[arg-type]
    spool.open()
    return spy, spool


def test_default_fsyncs_every_batch_before_append_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, spool = _opened(tmp_path, monkeypatch)
    for i in range(20):
        spool.append(_entries(3))
        assert len(spy.calls) == i + 1
    assert set(spy.calls) == {threading.current_thread().name}


def test_interval_appends_without_waiting_and_fsyncs_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, spool = _opened(tmp_path, monkeypatch, fsync_interval=0.05)
    for _ in range(200):
        spool.append(_entries(3))
    assert [c for c in spy.calls if not c.startswith("fsync-")] == []  # none inline
    spy.wait_for(1)
    assert len(spy.calls) < 200
    done = len(spy.calls)
    spool.append(_entries(1))
    spy.wait_for(done + 1)
    spool.close()
    reopened = Spool(tmp_path)
    reopened.open()
    assert len(list(reopened.pending())) == 601


def test_close_fsyncs_what_the_interval_has_not_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, spool = _opened(tmp_path, monkeypatch, fsync_interval=3600)
    spool.append(_entries(5))
    assert spy.calls == []
    spool.close()
    assert len(spy.calls) == 1


def test_segment_roll_fsyncs_the_segment_it_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interval thread syncs the current segment only: the one rolled
    away from is synced at the roll."""
    spy, spool = _opened(tmp_path, monkeypatch, segment_bytes=100, fsync_interval=3600)
    for _ in range(5):
        spool.append(_entries(3))
    assert len(spy.calls) == 4  # four rolls; the fifth batch waits for the interval
    assert len(list(tmp_path.glob("*.seg"))) == 5


def test_without_fsync_the_interval_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, spool = _opened(tmp_path, monkeypatch, fsync=False, fsync_interval=0.01)
    spool.append(_entries(5))
    time.sleep(0.1)
    spool.close()
    assert spy.calls == []


def test_rounds_with_nothing_written_sync_nothing() -> None:
    synced: list[float] = []
    syncer = IntervalSync(0.01, lambda: synced.append(time.monotonic()), "t")
    syncer.start()
    time.sleep(0.2)  # twenty idle rounds
    assert synced == []
    syncer.written()
    deadline = time.monotonic() + 10
    while not synced:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.2)  # written once: synced once
    syncer.stop()
    assert len(synced) == 1


def test_a_failed_fsync_is_counted_and_retried() -> None:
    outcomes = [OSError(5, "Input/output error"), None]
    synced = threading.Event()

    def sync() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        synced.set()

    syncer = IntervalSync(0.01, sync, "t")
    syncer.start()
    syncer.written()
    assert synced.wait(10)
    syncer.stop()
    assert (syncer.errors, syncer.syncs) == (1, 1)


@pytest.mark.parametrize("interval", [-1.0, float("nan")])
def test_bad_interval_is_a_clear_error(tmp_path: Path, interval: float) -> None:
    with pytest.raises(ValueError, match="fsync"):
        Spool(tmp_path, fsync_interval=interval)


def test_failing_background_fsyncs_are_counted_in_the_spool_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, fsync_interval=0.01)
    spool.open()

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    spool.append(_entries(3))
    deadline = time.monotonic() + 10
    while spool.stats().fsync_errors < 2:  # counted, and tried again
        assert time.monotonic() < deadline
        time.sleep(0.005)
    monkeypatch.undo()
    spool.close()


def test_a_spool_closed_and_opened_again_syncs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy, spool = _opened(tmp_path, monkeypatch, fsync_interval=0.02)
    spool.close()
    spool.open()
    done = len(spy.calls)
    spool.append(_entries(3))
    spy.wait_for(done + 1)
    spool.close()
