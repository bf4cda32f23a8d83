"""Follow a growing log file like `tail -F`, remembering where it stopped.

`Tail` yields complete lines only (a partial last line waits for its
newline), survives rotation (the path now names another inode: the old file
is read to its end first, then the new one from its start) and truncation
(copytruncate: the same inode got shorter, so reading restarts at 0), and
keeps its position, (inode, offset), in a small JSON state file written
atomically. On first sight of a file without state it starts at the end; with
state it resumes at the saved offset, and if the file was rotated while the
agent was down it finds the old inode among the rotated siblings
(`auth.log.1`, `audit.log.1`; compressed ones are not read) and finishes it
first. So an agent restart neither re-reads nor misses lines, as long as the
caller saves only positions whose lines it has emitted.

Shared by the auditd and authlog sources, together with `open_tail` and
`emit_retrying`, the parts of their loops that are the same.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.sources.base import Emit, SourceStats

__all__ = ["Line", "Position", "Tail", "emit_retrying", "follow", "open_tail", "state_file"]

log = structlog.get_logger("traintrail.sources.tail")

_COMPRESSED = (".gz", ".xz", ".bz2", ".zst", ".lz4")


@dataclass(frozen=True)
class Position:
    """A byte offset in the file with this inode."""

    inode: int
    offset: int


@dataclass(frozen=True)
class Line:
    """One complete line (newline and CR stripped) and where it lies."""

    text: str
    start: Position
    end: Position


def state_file(state_dir: str | Path | None, name: str) -> Path | None:
    """The state file of source `name` under `state_dir` (None: no state kept)."""
    return None if state_dir is None else Path(state_dir) / f"tail-{name}.json"


class Tail:
    """A follower of one path. Not thread-safe: one source loop owns it."""

    def __init__(
        self,
        path: str | Path,
        state_path: str | Path | None = None,
        *,
        from_start: bool = False,
        chunk_bytes: int = 1 << 20,
        max_line_bytes: int = 1 << 20,
    ) -> None:
        self.path = Path(path)
        self.state_path = None if state_path is None else Path(state_path)
        self.from_start = from_start
        self.chunk_bytes = chunk_bytes
        self.max_line_bytes = max_line_bytes
        self.extra: dict[str, Any] = {}  # caller's data saved along with the position
        self.overlong = 0  # lines dropped for exceeding max_line_bytes
        self._fd: int | None = None
        self._inode = 0
        self._pos = 0  # bytes read from the open file
        self._buf = b""  # read but not yet a complete line
        self._discarding = False  # inside an over-long line
        self._saved: tuple[int, int, str] | None = None

    # -- opening -------------------------------------------------------------

    def open(self) -> None:
        """Open the file and place the read position. Raises OSError
        (FileNotFoundError, PermissionError) when the file cannot be read."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(fd)
        state = self._load_state()
        if state is None:
            self._use(fd, st.st_ino, 0 if self.from_start else st.st_size)
            self.save()
            return
        inode, offset = state
        if inode == st.st_ino:
            self._use(fd, st.st_ino, offset if offset <= st.st_size else 0)
            return
        old = self._find_rotated(inode)
        if old is not None:  # finish the old file first; read() then switches
            os.close(fd)
            old_fd, old_size = old
            self._use(old_fd, inode, min(offset, old_size))
            log.info("resuming a rotated file", path=str(self.path), inode=inode, offset=offset)
            return
        # our file is gone: everything in the current one came after it
        self._use(fd, st.st_ino, 0)

    def _use(self, fd: int, inode: int, offset: int) -> None:
        self._fd, self._inode, self._pos, self._buf = fd, inode, offset, b""
        self._discarding = False
        os.lseek(fd, offset, os.SEEK_SET)

    def _find_rotated(self, inode: int) -> tuple[int, int] | None:
        prefix = self.path.name + "."
        try:
            candidates = sorted(self.path.parent.iterdir())
        except OSError:
            return None
        for candidate in candidates:
            if not candidate.name.startswith(prefix) or candidate.name.endswith(_COMPRESSED):
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            if st.st_ino == inode:
                return fd, st.st_size
            os.close(fd)
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading -------------------------------------------------------------

    @property
    def position(self) -> Position:
        """Just after the last complete line returned."""
        return Position(self._inode, self._pos - len(self._buf))

    def read(self) -> list[Line]:
        """The complete lines written since the last call (at most about
        `chunk_bytes` of them; call again while it returns lines)."""
        if self._fd is None:
            raise RuntimeError("Tail.read before open")
        if os.fstat(self._fd).st_size < self._pos:  # truncated in place
            log.info("file truncated; reading from its start", path=str(self.path))
            self._use(self._fd, self._inode, 0)
        lines, at_eof = self._drain()
        if not at_eof:
            return lines
        try:
            st = self.path.stat()
        except OSError:
            return lines  # rotated away and not yet recreated: keep the old one
        if st.st_ino == self._inode:
            return lines
        if self._buf and not self._discarding:  # the old file's unterminated last line
            lines.append(self._line(self._buf, self._pos - len(self._buf), self._pos))
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return lines
        log.info("file rotated; following the new one", path=str(self.path))
        os.close(self._fd)
        self._use(fd, os.fstat(fd).st_ino, 0)
        more, _ = self._drain()
        return lines + more

    def _drain(self) -> tuple[list[Line], bool]:
        assert self._fd is not None
        data = os.read(self._fd, self.chunk_bytes)
        at_eof = len(data) < self.chunk_bytes
        lines: list[Line] = []
        start = self._pos - len(self._buf)
        self._pos += len(data)
        buf = self._buf + data
        begin = 0
        while True:
            nl = buf.find(b"\n", begin)
            if nl < 0:
                break
            if self._discarding:  # the end of an over-long line
                self._discarding = False
            else:
                lines.append(self._line(buf[begin:nl], start + begin, start + nl + 1))
            begin = nl + 1
        rest = buf[begin:]
        if len(rest) > self.max_line_bytes:
            if not self._discarding:
                self.overlong += 1
                log.warning(
                    "line too long; dropped", path=str(self.path), limit=self.max_line_bytes
                )
            self._discarding = True
            rest = b""
        self._buf = rest
        return lines, at_eof

    def _line(self, raw: bytes, start: int, end: int) -> Line:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        return Line(text, Position(self._inode, start), Position(self._inode, end))

    # -- state ---------------------------------------------------------------

    def _load_state(self) -> tuple[int, int] | None:
        if self.state_path is None:
            return None
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning(
                "unreadable tail state; starting at the end",
                file=str(self.state_path),
                error=str(exc),
            )
            return None
        if not isinstance(state, dict) or state.get("path") != str(self.path):
            return None
        inode, offset = state.get("inode"), state.get("offset")
        if not isinstance(inode, int) or not isinstance(offset, int) or offset < 0:
            return None
        extra = state.get("extra")
        self.extra = extra if isinstance(extra, dict) else {}
        return inode, offset

    def save(self, position: Position | None = None) -> None:
        """Persist `position` (default: after the last line returned) and
        `extra`, atomically; a no-op without a state file or when unchanged."""
        if self.state_path is None:
            return
        pos = self.position if position is None else position
        payload = json.dumps(
            {
                "v": 1,
                "path": str(self.path),
                "inode": pos.inode,
                "offset": pos.offset,
                "extra": self.extra,
            },
            sort_keys=True,
        )
        if self._saved is not None and self._saved == (pos.inode, pos.offset, payload):
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with tmp.open("w") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.state_path)
        self._saved = (pos.inode, pos.offset, payload)


def open_tail(name: str, tail: Tail, stats: SourceStats, logger: Any) -> bool:
    """Open `tail` for source `name`; on failure log one line, set
    `stats.detail` and return False (the source then returns)."""
    try:
        tail.open()
    except FileNotFoundError:
        stats.detail = f"{tail.path} does not exist"
    except PermissionError:
        stats.detail = f"no permission to read {tail.path}"
    except OSError as exc:
        stats.detail = f"cannot read {tail.path}: {exc.strerror or exc}"
    else:
        stats.detail = f"following {tail.path}"
        return True
    logger.warning(f"{name} source disabled: {stats.detail}", source=name, path=str(tail.path))
    return False


def emit_retrying(
    emit: Emit,
    events: list[dict[str, Any]],
    stop: threading.Event,
    stats: SourceStats,
    logger: Any,
    *,
    backoff_s: Callable[[int], float] = lambda n: min(0.5 * 2**n, 10.0),
) -> bool:
    """Hand `events` to `emit`, retrying with backoff while it raises (a full
    disk under the spool); True once accepted, False if `stop` came first.
    The caller saves its tail position only after True, so nothing is lost."""
    if not events:
        return True
    attempt = 0
    while True:
        try:
            emit(events)
        except Exception as exc:
            stats.count(errors=1)
            logger.error("emit failed; retrying", error=str(exc), events=len(events))
            if stop.wait(backoff_s(attempt)):
                return False
            attempt += 1
            continue
        stats.count(emitted=len(events))
        return True


def follow(
    tail: Tail,
    emit: Emit,
    stop: threading.Event,
    stats: SourceStats,
    logger: Any,
    poll_s: float,
    parse: Callable[[list[Line]], list[dict[str, Any]]],
    checkpoint: Callable[[], Position | None] = lambda: None,
) -> None:
    """The loop of a log source until `stop`: read lines, `parse` them into
    events, emit, then save the position: `checkpoint()` (where the oldest
    line not yet fully handled starts) or else just after the last line."""
    stats.alive = True
    overlong = 0
    try:
        while not stop.is_set():
            try:
                lines = tail.read()
            except OSError as exc:
                stats.count(errors=1)
                logger.error("reading the log failed", path=str(tail.path), error=str(exc))
                stop.wait(poll_s)
                continue
            events = parse(lines)
            stats.count(skipped=tail.overlong - overlong)
            overlong = tail.overlong
            if not emit_retrying(emit, events, stop, stats, logger):
                break  # stopping: the position stays before these lines
            tail.save(checkpoint() or tail.position)
            if not lines:
                stop.wait(poll_s)
    finally:
        tail.close()
        stats.alive = False
