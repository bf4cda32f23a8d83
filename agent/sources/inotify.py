"""Changes under watched paths (datasets, checkpoints, code) via Linux inotify.

Through ctypes on libc (inotify_init1, inotify_add_watch, inotify_rm_watch),
read with poll() and a short timeout so `stop` is honoured. Directories are
watched recursively: a directory created or moved in gets its own watch, and
what it already holds when the watch lands (`mkdir -p a/b && touch a/b/f`
races the watch) is reported as "create" from a scan. Actions:

    IN_CREATE       "create"
    IN_MODIFY       "modify", at most one per path per `modify_debounce_s`
    IN_CLOSE_WRITE  "close_write" (a writer closed the file: the usual "it changed")
    IN_DELETE       "delete"
    IN_MOVED_FROM + IN_MOVED_TO (same cookie) → one "move", path = source,
                    detail from/to; a half without its pair (moved in from or
                    out to an unwatched place) is a "move" with only to or from
    IN_OPEN         "open", files only and only with `opens=True` (every read
                    opens: very chatty). inotify cannot tell an open for
                    writing from one for reading; "close_write" is the closest
                    it gets.

inotify does not say who: user, uid, pid and exe are None (auditd rules give
them). A full kernel queue (IN_Q_OVERFLOW) loses events: it is logged and
counted as an error. Watches count against fs.inotify.max_user_watches; when
it is reached, the rest of the tree goes unwatched and that is logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

from agent.sources.base import Emit, SourceStats, event

__all__ = ["InotifyConfig", "InotifySource"]

log = structlog.get_logger("traintrail.sources.inotify")

IN_MODIFY, IN_CLOSE_WRITE, IN_OPEN = 0x2, 0x8, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_EXCL_UNLINK, IN_ISDIR = 0x01000000, 0x04000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_MASK = (
    IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_EXCL_UNLINK
)  # fmt: skip
_SCAN_WINDOW_S = 2.0  # an IN_CREATE this soon after a scan saw the path is the same create
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


@dataclass(frozen=True)
class InotifyConfig:
    """Args:
    paths: directories (or single files) to watch.
    recursive: watch subdirectories too, including ones created later.
    opens: also report IN_OPEN of files as "open" (off: too chatty).
    poll_s: longest wait for events before looking at `stop` again.
    modify_debounce_s: at most one "modify" per path per this long."""

    paths: tuple[str, ...]
    recursive: bool = True
    opens: bool = False
    poll_s: float = 0.2
    modify_debounce_s: float = 1.0

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.modify_debounce_s < 0:
            raise ValueError("inotify poll_s must be > 0 and modify_debounce_s >= 0")


class _Inotify:
    """The three libc calls, errors as OSError."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        wd: int = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return wd

    def rm(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails only for a watch already gone: nothing to do

    def close(self) -> None:
        os.close(self.fd)


class InotifySource:
    """Watches `config.paths` (see the module docstring)."""

    name = "inotify"

    def __init__(self, config: InotifyConfig, node: str) -> None:
        self.config = config
        self.node = node
        self.stats = SourceStats()
        self.stream = f"access/{node}/inotify"
        self._ino: _Inotify | None = None
        self._paths: dict[int, str] = {}  # wd → watched path
        self._file_watch: set[int] = set()  # wds that watch a file, not a directory
        self._modified: dict[str, float] = {}  # path → last "modify" emitted (monotonic)
        self._scanned: dict[str, float] = {}  # path → reported by a scan (monotonic)
        self._moves: dict[int, tuple[str, bool, float]] = {}  # cookie → (from, isdir, when)
        self._out: list[dict[str, Any]] = []
        self._full_logged = False
        self._pruned = 0.0

    # -- loop ----------------------------------------------------------------

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if not sys.platform.startswith("linux"):
            return self._disable(f"inotify exists only on Linux, not {sys.platform}")
        try:
            self._ino = _Inotify()
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            return self._disable(f"inotify unavailable: {exc}")
        try:
            for root in self.config.paths:
                if os.path.isdir(root):  # noqa: PTH112
                    self._watch_tree(root, scan=False)
                elif os.path.exists(root):  # noqa: PTH110
                    self._watch(root, file=True)
                else:
                    log.warning("watched path does not exist", path=root)
            if not self._paths:
                return self._disable(f"none of the watched paths exists: {self.config.paths}")
            self.stats.detail = f"watching {len(self._paths)} paths"
            self.stats.alive = True
            poller = select.poll()
            poller.register(self._ino.fd, select.POLLIN)
            while not stop.is_set():
                if poller.poll(self.config.poll_s * 1000):
                    self._read()
                self._expire_moves(time.monotonic())
                self._flush(emit)
        finally:
            self.stats.alive = False
            self._ino.close()
            self._ino = None
        return None

    def _disable(self, why: str) -> None:
        self.stats.detail = why
        log.warning(f"inotify source disabled: {why}")

    def _flush(self, emit: Emit) -> None:
        if not self._out:
            return
        events, self._out = self._out, []
        try:
            emit(events)
        except Exception as exc:  # the spool refused: these changes are lost
            self.stats.count(errors=1)
            log.error("emit failed; inotify events dropped", error=str(exc), events=len(events))
            return
        self.stats.count(emitted=len(events))

    # -- watches -------------------------------------------------------------

    def _watch(self, path: str, file: bool = False) -> int | None:
        assert self._ino is not None
        mask = _MASK | (IN_OPEN if self.config.opens else 0) | (0 if file else IN_ONLYDIR)
        try:
            wd = self._ino.add(path, mask)
        except OSError as exc:
            if exc.errno == errno.ENOSPC and not self._full_logged:
                self._full_logged = True
                self.stats.count(errors=1)
                log.error(
                    "inotify watch limit reached; raise fs.inotify.max_user_watches", path=path
                )
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENOSPC):
                self.stats.count(errors=1)
                log.warning("cannot watch path", path=path, error=exc.strerror)
            return None
        self._paths[wd] = path
        if file:
            self._file_watch.add(wd)
        return wd

    def _watch_tree(self, top: str, scan: bool) -> None:
        """Watch `top` and (recursively) its subdirectories; with `scan`,
        report what is already inside as created."""
        if self._watch(top) is None or not self.config.recursive:
            return
        for parent, dirs, files in os.walk(top):
            if parent != top:
                self._watch(parent)
            if scan:
                for name in dirs + files:
                    path = os.path.join(parent, name)  # noqa: PTH118
                    self._scanned[path] = time.monotonic()
                    self._add("create", path, isdir=name in dirs)

    def _forget_tree(self, top: str) -> None:
        assert self._ino is not None
        for wd, path in list(self._paths.items()):
            if path == top or path.startswith(top + "/"):
                self._ino.rm(wd)
                del self._paths[wd]

    def _rename_tree(self, old: str, new: str) -> None:
        for wd, path in self._paths.items():
            if path == old or path.startswith(old + "/"):
                self._paths[wd] = new + path[len(old) :]

    # -- events --------------------------------------------------------------

    def _read(self) -> None:
        assert self._ino is not None
        try:
            data = os.read(self._ino.fd, 256 * 1024)
        except BlockingIOError:
            return
        now = time.monotonic()
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size : offset + _HEADER.size + length]
            offset += _HEADER.size + length
            self._handle(wd, mask, cookie, os.fsdecode(raw.rstrip(b"\0")), now)
        if now - self._pruned >= 5.0:
            self._prune(now)

    def _handle(self, wd: int, mask: int, cookie: int, name: str, now: float) -> None:
        if mask & IN_Q_OVERFLOW:
            self.stats.count(errors=1)
            log.error(
                "inotify queue overflowed; changes were lost", hint="fs.inotify.max_queued_events"
            )
            return
        base = self._paths.get(wd)
        if base is None:
            return
        if mask & IN_IGNORED:  # the watch is gone (deleted, unmounted, rm_watch)
            self._paths.pop(wd, None)
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
            if wd in self._file_watch or base in self.config.paths:
                self._add("delete" if mask & IN_DELETE_SELF else "move", base, isdir=False)
            return
        path = os.path.join(base, name) if name else base  # noqa: PTH118
        isdir = bool(mask & IN_ISDIR)
        if mask & IN_CREATE:
            scanned = self._scanned.pop(path, None)
            if scanned is not None and now - scanned < _SCAN_WINDOW_S:
                return  # already reported by the scan of its new parent
            self._add("create", path, isdir)
            if isdir and self.config.recursive:
                self._watch_tree(path, scan=True)
        if mask & IN_MODIFY:
            last = self._modified.get(path)
            if last is None or now - last >= self.config.modify_debounce_s:
                self._modified[path] = now
                self._add("modify", path, isdir)
        if mask & IN_CLOSE_WRITE:
            self._add("close_write", path, isdir)
        if mask & IN_OPEN and not isdir:
            self._add("open", path, isdir)
        if mask & IN_DELETE:
            self._add("delete", path, isdir)
            self._modified.pop(path, None)
        if mask & IN_MOVED_FROM:
            self._moves[cookie] = (path, isdir, now)
        if mask & IN_MOVED_TO:
            src = self._moves.pop(cookie, None)
            if src is not None:
                self._add("move", src[0], isdir, src=src[0], dst=path)
                if isdir:
                    self._rename_tree(src[0], path)
            else:
                self._add("move", path, isdir, dst=path)
                if isdir and self.config.recursive:
                    self._watch_tree(path, scan=False)

    def _expire_moves(self, now: float) -> None:
        """A MOVED_FROM whose MOVED_TO did not follow: moved out of the watch."""
        for cookie, (path, isdir, when) in list(self._moves.items()):
            if now - when >= self.config.poll_s:
                del self._moves[cookie]
                self._add("move", path, isdir, src=path)
                if isdir:
                    self._forget_tree(path)

    def _prune(self, now: float) -> None:
        self._pruned = now
        keep = self.config.modify_debounce_s
        self._modified = {p: t for p, t in self._modified.items() if now - t < keep}
        self._scanned = {p: t for p, t in self._scanned.items() if now - t < _SCAN_WINDOW_S}

    def _add(
        self, action: str, path: str, isdir: bool, src: str | None = None, dst: str | None = None
    ) -> None:
        detail = {"isdir": "true"} if isdir else {}
        if src is not None:
            detail["from"] = _printable(src)
        if dst is not None:
            detail["to"] = _printable(dst)
        body = {
            "source": "inotify",
            "action": action,
            "path": _printable(path),
            "user": None,
            "uid": None,
            "pid": None,
            "exe": None,
            "success": True,
            "run_id": None,
            "detail": detail,
        }
        self._out.append(event("AccessEvent", self.stream, self.node, body))


def _printable(path: str) -> str:
    """A path as UTF-8 text; bytes that are not UTF-8 become \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
