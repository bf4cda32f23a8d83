"""`Tail`: tail -F semantics on real files, and a restart that resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

from agent.sources.tail import Tail


def _texts(tail: Tail) -> list[str]:
    return [line.text for line in tail.read()]


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


class TestTail:
    def test_starts_at_the_end_on_first_sight(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        log.write_text("old 1\nold 2\n")
        tail = Tail(log)
        tail.open()
        assert _texts(tail) == []
        _append(log, "new 1\nnew 2\n")
        assert _texts(tail) == ["new 1", "new 2"]
        assert _texts(tail) == []

    def test_from_start(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        log.write_text("a\r\nb\n")
        tail = Tail(log, from_start=True)
        tail.open()
        assert _texts(tail) == ["a", "b"]

    def test_partial_line_waits_for_its_newline(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        log.write_text("")
        tail = Tail(log)
        tail.open()
        _append(log, "complete\npart")
        lines = tail.read()
        assert [x.text for x in lines] == ["complete"]
        assert tail.position.offset == len("complete\n")
        _append(log, "ial\n")
        [line] = tail.read()
        assert line.text == "partial"
        assert (line.start.offset, line.end.offset) == (9, 17)

    def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(self, tmp_path: Path) -> None:
        log = tmp_path / "audit.log"
        log.write_text("")
        tail = Tail(log)
        tail.open()
        _append(log, "a\n")
        writer = log.open("a")  # the daemon keeps writing the old file until told
        log.rename(tmp_path / "audit.log.1")
        writer.write("b\nunterminated")
        writer.close()
        log.write_text("c\n")
        assert _texts(tail) == ["a", "b", "unterminated", "c"]
        _append(log, "d\n")
        assert _texts(tail) == ["d"]

    def test_file_missing_during_rotation_keeps_waiting(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        log.write_text("")
        tail = Tail(log)
        tail.open()
        log.rename(tmp_path / "auth.log.1")
        assert _texts(tail) == []
        log.write_text("x\n")
        assert _texts(tail) == ["x"]

    def test_truncation_restarts_at_zero(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        log.write_text("")
        tail = Tail(log)
        tail.open()
        _append(log, "first line\nsecond line\n")
        assert len(tail.read()) == 2
        with log.open("r+") as fh:  # logrotate's copytruncate
            fh.truncate(0)
        _append(log, "after\n")
        assert _texts(tail) == ["after"]

    def test_restart_resumes_at_the_saved_offset(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        state = tmp_path / "state" / "tail-authlog.json"
        log.write_text("before the agent\n")
        tail = Tail(log, state)
        tail.open()  # first sight: the end, saved at once
        _append(log, "one\ntwo\n")
        assert _texts(tail) == ["one", "two"]
        tail.save()
        _append(log, "three\nfou")  # read by nobody: the agent is stopping
        tail.close()
        saved = json.loads(state.read_text())
        assert saved["offset"] == len("before the agent\none\ntwo\n")
        assert saved["inode"] == log.stat().st_ino
        assert not list(state.parent.glob("*.tmp"))

        _append(log, "r\n")
        tail = Tail(log, state)
        tail.open()
        assert _texts(tail) == ["three", "four"]

    def test_restart_after_rotation_while_down(self, tmp_path: Path) -> None:
        log = tmp_path / "audit.log"
        state = tmp_path / "tail.json"
        log.write_text("")
        tail = Tail(log, state)
        tail.open()
        _append(log, "seen\n")
        assert _texts(tail) == ["seen"]
        tail.save()
        tail.close()
        _append(log, "missed-before-rotation\n")
        log.rename(tmp_path / "audit.log.1")
        log.write_text("in-new-file\n")
        tail = Tail(log, state)
        tail.open()
        assert _texts(tail) == ["missed-before-rotation", "in-new-file"]

    def test_saved_position_may_be_held_back(self, tmp_path: Path) -> None:
        log = tmp_path / "audit.log"
        state = tmp_path / "tail.json"
        log.write_text("")
        tail = Tail(log, state)
        tail.open()
        _append(log, "a\nb\n")
        lines = tail.read()
        tail.extra = {"done": ["x"]}
        tail.save(lines[1].start)  # b's event is not finished yet
        tail.close()
        tail = Tail(log, state)
        tail.open()
        assert _texts(tail) == ["b"] and tail.extra == {"done": ["x"]}

    def test_state_of_another_path_or_garbage_is_ignored(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        state = tmp_path / "tail.json"
        log.write_text("x\n")
        state.write_text("{not json")
        tail = Tail(log, state)
        tail.open()
        assert _texts(tail) == []
        state.write_text(json.dumps({"path": "/elsewhere", "inode": 1, "offset": 0}))
        tail = Tail(log, state)
        tail.open()
        assert _texts(tail) == []

    def test_overlong_line_is_dropped(self, tmp_path: Path) -> None:
        log = tmp_path / "auth.log"
        log.write_text("")
        tail = Tail(log, chunk_bytes=64, max_line_bytes=100)
        tail.open()
        _append(log, "x" * 500 + "\nok\n")
        got: list[str] = []
        for _ in range(20):
            got += _texts(tail)
        assert got == ["ok"] and tail.overlong == 1
