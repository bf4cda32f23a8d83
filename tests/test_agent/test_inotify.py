"""The inotify source on a real temporary tree, through the real kernel API."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.sources.inotify import IN_Q_OVERFLOW, InotifyConfig, InotifySource
from schemas import default_registry, encode
from tests.samples import envelope

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux")


class Watch:
    """A running source and what it emitted."""

    def __init__(self, config: InotifyConfig) -> None:
        self.source = InotifySource(config, "gpu-01")
        self.events: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.source.run, args=(self._emit, self.stop))
        self.thread.start()
        self.wait(lambda: self.source.stats.alive)

    def _emit(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            self.events.extend(events)

    def actions(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(e["body"]["action"], e["body"]["path"]) for e in self.events]

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; got {self.actions()}"
            time.sleep(0.02)

    def wait_for(self, action: str, path: Path) -> dict[str, Any]:
        self.wait(lambda: (action, str(path)) in self.actions())
        with self._lock:
            return next(
                e
                for e in self.events
                if (e["body"]["action"], e["body"]["path"]) == (action, str(path))
            )

    def close(self) -> float:
        began = time.monotonic()
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        for e in self.events:
            assert (e["type"], e["stream"], e["key"]) == (
                "AccessEvent",
                "access/gpu-01/inotify",
                "gpu-01",
            )
            encode(default_registry(), "AccessEvent", {**e["body"], "envelope": envelope()})
        return time.monotonic() - began


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Callable[..., Watch]]:
    started: list[Watch] = []

    def start(**kwargs: Any) -> Watch:
        kwargs.setdefault("paths", (str(tmp_path / "data"),))
        w = Watch(InotifyConfig(**kwargs))
        started.append(w)
        return w

    (tmp_path / "data").mkdir()
    yield start
    for w in started:
        if w.thread.is_alive():
            w.close()


def test_create_modify_close_write_delete(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    w = watch()
    f = tmp_path / "data" / "train.csv"
    with f.open("w") as fh:
        fh.write("a,b\n")
        fh.flush()
        for _ in range(20):  # many writes within a second: one "modify"
            fh.write("1,2\n")
            fh.flush()
    event = w.wait_for("close_write", f)
    assert event["body"]["user"] is None and event["body"]["pid"] is None
    assert [a for a, p in w.actions() if p == str(f)] == ["create", "modify", "close_write"]
    f.unlink()
    w.wait_for("delete", f)
    assert w.close() < 1.0


def test_move_is_one_event_with_from_and_to(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    src, dst = tmp_path / "data" / "a.pt", tmp_path / "data" / "b.pt"
    src.write_bytes(b"x")
    w = watch()
    src.rename(dst)
    event = w.wait_for("move", src)
    assert event["body"]["detail"] == {"from": str(src), "to": str(dst)}
    time.sleep(0.3)
    assert [a for a, _ in w.actions()] == ["move"]
    w.close()


def test_moves_in_and_out_of_the_tree(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "in.bin").write_bytes(b"x")
    (tmp_path / "data" / "out.bin").write_bytes(b"y")
    w = watch()
    (outside / "in.bin").rename(tmp_path / "data" / "in.bin")
    (tmp_path / "data" / "out.bin").rename(outside / "out.bin")
    moved_in = w.wait_for("move", tmp_path / "data" / "in.bin")
    moved_out = w.wait_for("move", tmp_path / "data" / "out.bin")
    assert moved_in["body"]["detail"] == {"to": str(tmp_path / "data" / "in.bin")}
    assert moved_out["body"]["detail"] == {"from": str(tmp_path / "data" / "out.bin")}
    w.close()


def test_new_subdirectories_are_watched(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    (tmp_path / "data" / "old").mkdir()
    w = watch()
    (tmp_path / "data" / "old" / "f").write_text("existing subdir\n")
    w.wait_for("close_write", tmp_path / "data" / "old" / "f")

    sub = tmp_path / "data" / "epoch1"
    sub.mkdir()
    event = w.wait_for("create", sub)
    assert event["body"]["detail"] == {"isdir": "true"}
    time.sleep(0.3)  # the watch on epoch1 is in place by now
    (sub / "shard-0.bin").write_bytes(b"z")
    w.wait_for("close_write", sub / "shard-0.bin")

    deep = tmp_path / "data" / "a" / "b" / "c"
    os.makedirs(deep)  # races the watches: what the scan finds is reported once
    (deep / "f.txt").write_text("hi")
    w.wait_for("create", deep / "f.txt")
    time.sleep(0.3)
    creates = [p for a, p in w.actions() if a == "create"]
    for p in ("a", "a/b", "a/b/c", "a/b/c/f.txt"):
        assert creates.count(str(tmp_path / "data" / p)) == 1, p
    (deep / "g.txt").write_text("later")
    w.wait_for("close_write", deep / "g.txt")

    # a directory moved within the tree keeps its watch, under its new name
    (tmp_path / "data" / "a").rename(tmp_path / "data" / "z")
    w.wait_for("move", tmp_path / "data" / "a")
    (tmp_path / "data" / "z" / "b" / "c" / "h.txt").write_text("x")
    w.wait_for("close_write", tmp_path / "data" / "z" / "b" / "c" / "h.txt")
    w.close()


def test_opens_only_when_asked(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    f = tmp_path / "data" / "labels.txt"
    f.write_text("cat\n")
    quiet = watch()
    loud = watch(opens=True)
    assert f.read_text() == "cat\n"
    loud.wait_for("open", f)
    time.sleep(0.2)
    assert quiet.actions() == []
    quiet.close()
    loud.close()


def test_watching_a_single_file(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    f = tmp_path / "data" / "model.pt"
    f.write_bytes(b"w")
    w = watch(paths=(str(f),))
    with f.open("ab") as fh:
        fh.write(b"more")
    w.wait_for("close_write", f)
    f.unlink()
    w.wait_for("delete", f)
    w.close()


def test_non_utf8_names_are_escaped(tmp_path: Path, watch: Callable[..., Watch]) -> None:
    w = watch()
    raw = os.fsencode(tmp_path / "data") + b"/shard-\xff.bin"
    with open(raw, "wb") as fh:
        fh.write(b"x")
    w.wait_for("close_write", tmp_path / "data" / "shard-\\xff.bin")
    w.close()  # and every body encodes


def test_queue_overflow_is_counted() -> None:
    source = InotifySource(InotifyConfig(paths=("/nonexistent",)), "n")
    source._handle(-1, IN_Q_OVERFLOW, 0, "", 0.0)  # what the kernel sends when it dropped events
    assert source.stats.errors == 1


def test_stop_returns_within_a_second(watch: Callable[..., Watch]) -> None:
    w = watch(poll_s=0.2)
    time.sleep(0.1)
    assert w.close() < 1.0


def test_missing_paths_disable_the_source(tmp_path: Path) -> None:
    source = InotifySource(InotifyConfig(paths=(str(tmp_path / "nope"),)), "n")
    source.run(lambda events: None, threading.Event())
    assert "none of the watched paths exists" in source.stats.detail
    assert not source.stats.alive


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        InotifyConfig(paths=("/data",), poll_s=0)
