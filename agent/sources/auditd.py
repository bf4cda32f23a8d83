"""Linux audit log (auditd) → one AccessEvent per syscall event.

Rules such as `-w /data -p rwa -k traintrail-data` make the kernel log each
matching syscall as a group of records sharing `msg=audit(TIME:SERIAL)`:

    type=SYSCALL msg=audit(1700000000.123:4567): arch=c000003e syscall=257 success=yes ...
    type=CWD msg=audit(1700000000.123:4567): cwd="/home/alice"
    type=PATH msg=audit(1700000000.123:4567): item=0 name="/data/train.csv" ... nametype=NORMAL
    type=PROCTITLE msg=audit(1700000000.123:4567): proctitle=707974686F6E00747261696E2E7079
    type=EOE msg=audit(1700000000.123:4567):

`AuditParser` groups records by (time, serial) and finishes a group when its
EOE arrives, when audit time has moved `eoe_timeout_s` past it (the rule
auparse uses; works when a backlog is read faster than real time), or when no
record of it came for that long by the wall clock. Records of different
events may interleave, so a later serial alone does not finish a group.
Groups without a SYSCALL record (PAM's USER_* records, ...) are not access
events and are ignored; lines that are not audit records are counted skipped.

Values: `"quoted"` is literal; untrusted strings (name, exe, comm, cwd, key,
proctitle) are hex when they hold spaces or control characters, and
proctitle's hex is argv joined by NULs; `(null)`/`(none)` mean absent. In
`log_format = ENRICHED` a 0x1d byte separates the raw fields from resolved
ones (`SYSCALL=openat UID="alice"`): the syscall name and user names are
taken from there when present.

Action (`_ACTIONS`): open/openat/openat2 → "open", "open_write" when the
flags ask for write access (O_WRONLY/O_RDWR/O_CREAT/O_TRUNC; not visible for
openat2), "create" when a PATH item was created; unlink* → "delete"; rename*
→ "move" (path = source, detail from/to); execve → "exec"; others by family;
unknown → "syscall:<name or number>". Numbers are mapped for x86_64 and
aarch64 (ENRICHED logs name them on any arch). A relative name is resolved
against CWD unless a directory fd was used (detail["dirfd"]).
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from agent.sources.base import Emit, SourceStats, event
from agent.sources.tail import Line, Position, Tail, follow, open_tail, state_file

__all__ = ["AuditParser", "AuditdConfig", "AuditdSource", "parse_record"]

log = structlog.get_logger("traintrail.sources.auditd")

_RECORD = re.compile(
    r"(?:^|\s)(?:node=(?P<node>\S+) )?type=(?P<type>[A-Z0-9_]+) "
    r"msg=audit\((?P<sec>\d+)\.(?P<frac>\d+):(?P<serial>\d+)\):\s?(?P<body>.*)$"
)
_FIELD = re.compile(r"([A-Za-z_][\w-]*)=(\"[^\"]*\"|'[^']*'|\S*)")
_HEX = re.compile(r"^(?:[0-9A-F]{2})+$")
_UNTRUSTED = frozenset({"name", "comm", "exe", "cwd", "key", "proctitle", "path", "dir", "file"})
_STANDALONE = ("USER_", "CRED_", "DAEMON_", "SERVICE_", "SYSTEM_", "ANOM_", "ACCT_", "GRP_")
_AT_FDCWD = 0xFFFFFF9C
_INT_MAX = 2**31 - 1

# fmt: off
_X86_64 = {
    0: "read", 1: "write", 2: "open", 4: "stat", 5: "fstat", 6: "lstat", 17: "pread64",
    18: "pwrite64", 19: "readv", 20: "writev", 21: "access", 59: "execve", 76: "truncate",
    77: "ftruncate", 82: "rename", 83: "mkdir", 84: "rmdir", 85: "creat", 86: "link",
    87: "unlink", 88: "symlink", 90: "chmod", 91: "fchmod", 92: "chown", 93: "fchown",
    94: "lchown", 132: "utime", 188: "setxattr", 189: "lsetxattr", 190: "fsetxattr",
    197: "removexattr", 198: "lremovexattr", 199: "fremovexattr", 235: "utimes", 257: "openat",
    258: "mkdirat", 260: "fchownat", 261: "futimesat", 262: "newfstatat", 263: "unlinkat",
    264: "renameat", 265: "linkat", 266: "symlinkat", 268: "fchmodat", 269: "faccessat",
    280: "utimensat", 316: "renameat2", 322: "execveat", 332: "statx", 437: "openat2",
    439: "faccessat2", 452: "fchmodat2",
}
_AARCH64 = {
    5: "setxattr", 6: "lsetxattr", 7: "fsetxattr", 14: "removexattr", 15: "lremovexattr",
    16: "fremovexattr", 34: "mkdirat", 35: "unlinkat", 36: "symlinkat", 37: "linkat",
    38: "renameat", 45: "truncate", 46: "ftruncate", 48: "faccessat", 52: "fchmod",
    53: "fchmodat", 54: "fchownat", 55: "fchown", 56: "openat", 63: "read", 64: "write",
    65: "readv", 66: "writev", 67: "pread64", 68: "pwrite64", 79: "newfstatat", 80: "fstat",
    88: "utimensat", 221: "execve", 276: "renameat2", 281: "execveat", 291: "statx",
    437: "openat2", 439: "faccessat2", 452: "fchmodat2",
}
# fmt: on
_ARCH = {"c000003e": _X86_64, "c00000b7": _AARCH64}
_ACTIONS = {  # action: the syscalls that mean it
    "open": "open openat openat2",
    "create": "creat",
    "read": "read pread64 readv",
    "write": "write pwrite64 writev",
    "delete": "unlink unlinkat rmdir",
    "move": "rename renameat renameat2",
    "exec": "execve execveat",
    "chmod": "chmod fchmod fchmodat fchmodat2",
    "chown": "chown fchown lchown fchownat",
    "truncate": "truncate ftruncate",
    "link": "link linkat symlink symlinkat",
    "mkdir": "mkdir mkdirat",
    "xattr": "setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr",
    "utime": "utime utimes futimesat utimensat",
    "stat": "stat fstat lstat newfstatat statx access faccessat faccessat2",
}
_ACTION_OF = {name: action for action, names in _ACTIONS.items() for name in names.split()}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True)
class AuditdConfig:
    """Args:
    path: the audit log auditd writes (`log_file` in auditd.conf).
    keys: only events whose rule key (`-k`) is one of these; empty = all.
    poll_s: how often to look for new lines.
    group_timeout_s: finish a record group without EOE after this long."""

    path: str = "/var/log/audit/audit.log"
    keys: tuple[str, ...] = ()
    poll_s: float = 0.25
    group_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.poll_s <= 0 or self.group_timeout_s <= 0:
            raise ValueError("auditd poll_s and group_timeout_s must be > 0")


@dataclass(frozen=True)
class Record:
    """One parsed audit line."""

    type: str
    id: str  # "SECONDS.MILLIS:SERIAL", unique per boot
    time_us: int
    fields: dict[str, str]  # unquoted, except untrusted strings (see _text)
    enriched: dict[str, str]  # the ENRICHED section, unquoted


def parse_record(line: str) -> Record | None:
    """One audit line → Record, or None if it is not one."""
    m = _RECORD.search(line.rstrip("\n"))
    if m is None:
        return None
    raw, _, enriched = m["body"].partition("\x1d")
    frac = (m["frac"] + "000000")[:6]
    return Record(
        type=m["type"],
        id=f"{m['sec']}.{m['frac']}:{m['serial']}",
        time_us=int(m["sec"]) * 1_000_000 + int(frac),
        fields=_fields(raw),
        enriched=_fields(enriched),
    )


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _FIELD.findall(text):
        if key not in _UNTRUSTED and len(value) >= 2 and value[0] == value[-1] in "\"'":
            value = value[1:-1]
        out.setdefault(key, value)
    return out


def _text(fields: dict[str, str], key: str) -> str | None:
    """An untrusted-string field: "quoted text", or hex, or absent."""
    value = fields.get(key)
    if value is None or value in ("(null)", "(none)", ""):
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if _HEX.match(value):
        raw = bytes.fromhex(value)
        if key == "proctitle":
            raw = raw.rstrip(b"\0").replace(b"\0", b" ")
        return raw.decode("utf-8", errors="replace")
    return value


def _int(value: str | None, base: int = 10) -> int | None:
    try:
        return None if value is None else int(value, base)
    except ValueError:
        return None


@lru_cache(maxsize=512)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@dataclass
class _Group:
    id: str
    time_us: int
    start: Position | None
    last_seen: float
    records: list[Record] = field(default_factory=list)


class AuditParser:
    """Audit lines in, finished (time_us, AccessEvent body) pairs out."""

    def __init__(
        self,
        keys: Iterable[str] = (),
        stats: SourceStats | None = None,
        *,
        eoe_timeout_s: float = 2.0,
        max_pending: int = 4096,
        done: Iterable[str] = (),
    ) -> None:
        self.keys = frozenset(keys)
        self.stats = stats if stats is not None else SourceStats()
        self.eoe_timeout_us = int(eoe_timeout_s * 1_000_000)
        self.eoe_timeout_s = eoe_timeout_s
        self.max_pending = max_pending
        self._pending: dict[str, _Group] = {}
        self._newest_us = 0
        self._done: deque[str] = deque(done, maxlen=1024)  # ids emitted, for restarts
        self._done_set = set(self._done)

    def feed(
        self, line: str, start: Position | None = None, now: float | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """Take one line; return the events it completes."""
        now = time.monotonic() if now is None else now
        if not line.strip():
            return []
        rec = parse_record(line)
        if rec is None:
            self.stats.count(skipped=1)
            return []
        out: list[tuple[int, dict[str, Any]]] = []
        group = self._pending.get(rec.id)
        if group is not None:
            group.records.append(rec)
            group.last_seen = now
            if rec.type == "EOE":
                out += self._finish(rec.id)
        elif not rec.type.startswith(_STANDALONE) and rec.type != "EOE":
            self._pending[rec.id] = _Group(rec.id, rec.time_us, start, now, [rec])
        # else: a userspace record (single, never a syscall event) or a stray EOE
        self._newest_us = max(self._newest_us, rec.time_us)
        limit = self._newest_us - self.eoe_timeout_us
        for gid in [g.id for g in self._pending.values() if g.time_us < limit]:
            out += self._finish(gid)
        while len(self._pending) > self.max_pending:
            out += self._finish(next(iter(self._pending)))
        return out

    def flush(
        self, now: float | None = None, everything: bool = False
    ) -> list[tuple[int, dict[str, Any]]]:
        """Finish groups idle for `eoe_timeout_s` (or all of them)."""
        now = time.monotonic() if now is None else now
        stale = [
            g.id
            for g in self._pending.values()
            if everything or now - g.last_seen >= self.eoe_timeout_s
        ]
        out: list[tuple[int, dict[str, Any]]] = []
        for gid in stale:
            out += self._finish(gid)
        return out

    def pending_start(self) -> Position | None:
        """Where the oldest unfinished group began: the safe resume point."""
        for group in self._pending.values():
            if group.start is not None:
                return group.start
        return None

    def done_ids(self) -> list[str]:
        return list(self._done) if self._pending else []

    def _finish(self, gid: str) -> list[tuple[int, dict[str, Any]]]:
        group = self._pending.pop(gid)
        if gid in self._done_set:
            return []  # emitted before an agent restart
        try:
            body = _body(group)
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            self.stats.count(skipped=1)
            log.warning("malformed audit event skipped", id=gid, error=str(exc))
            return []
        if body is None:
            return []
        if self.keys and not self.keys.intersection(body["detail"].get("key", "").split(",")):
            return []
        if len(self._done) == self._done.maxlen:
            self._done_set.discard(self._done[0])
        self._done.append(gid)
        self._done_set.add(gid)
        return [(group.time_us, body)]


def _body(group: _Group) -> dict[str, Any] | None:
    by_type: dict[str, list[Record]] = {}
    for rec in group.records:
        by_type.setdefault(rec.type, []).append(rec)
    if "SYSCALL" not in by_type:
        return None
    sc = by_type["SYSCALL"][0]
    f, e = sc.fields, sc.enriched
    number = int(f["syscall"])  # KeyError/ValueError: malformed
    pid = _int(f.get("pid"))
    if pid is None:
        raise ValueError("SYSCALL record without a pid")
    name = e.get("SYSCALL") or _ARCH.get(f.get("arch", ""), {}).get(number)
    cwd = _text(by_type["CWD"][0].fields, "cwd") if "CWD" in by_type else None
    items = sorted(
        (r.fields for r in by_type.get("PATH", [])), key=lambda p: _int(p.get("item")) or 0
    )
    detail: dict[str, str | None] = {
        "serial": group.id,
        "syscall": str(number),
        "syscall_name": name,
        "arch": e.get("ARCH") or f.get("arch"),
        "key": ",".join(k for k in (_text(f, "key") or "").split("\x01") if k) or None,
        "comm": _text(f, "comm"),
        "proctitle": _text(by_type["PROCTITLE"][0].fields, "proctitle")
        if "PROCTITLE" in by_type
        else None,
        "cwd": cwd,
        "exit": f.get("exit"),
        "ppid": f.get("ppid"),
        "auid": "unset" if f.get("auid") == "4294967295" else f.get("auid"),
        "euid": f.get("euid"),
        "tty": f.get("tty"),
        "ses": f.get("ses"),
    }
    auid = _int(f.get("auid"))
    detail["auid_user"] = e.get("AUID") or (_user_name(auid) if auid is not None else None)
    if detail["auid_user"] == "unset":
        detail["auid_user"] = None
    exit_code = _int(f.get("exit"))
    if exit_code is not None and exit_code < 0 and -exit_code in errno.errorcode:
        detail["errno"] = errno.errorcode[-exit_code]
    dirfd = _int(f.get("a0"), 16) if name and name.endswith(("at", "at2")) else None
    relative_ok = dirfd is None or dirfd & 0xFFFFFFFF == _AT_FDCWD
    if not relative_ok:
        detail["dirfd"] = f.get("a0")

    def resolve(p: dict[str, str]) -> str | None:
        path = _text(p, "name")
        if path is None or path.startswith("/") or not relative_ok or not cwd:
            return path
        return os.path.normpath(f"{cwd.rstrip('/')}/{path}")

    named = [p for p in items if p.get("nametype") in ("NORMAL", "CREATE", "DELETE")]
    primary = named[0] if named else next((p for p in items if _text(p, "name")), None)
    path = resolve(primary) if primary is not None else None
    if primary is not None:
        detail["inode"] = primary.get("inode")
        detail["mode"] = primary.get("mode")
    action = _ACTION_OF.get(name or "", f"syscall:{name or number}")
    if action == "open":
        flags = _int(f.get("a1" if name == "open" else "a2"), 16) if name != "openat2" else None
        if flags is not None and flags & _WRITE_FLAGS:
            action = "open_write"
        if any(p.get("nametype") == "CREATE" for p in items):
            action = "create"
    elif action == "move":
        src = next((p for p in items if p.get("nametype") == "DELETE"), None)
        dst = next((p for p in items if p.get("nametype") == "CREATE"), None)
        detail["from"] = resolve(src) if src else None
        detail["to"] = resolve(dst) if dst else None
        path = detail["from"] or path
    uid = _int(f.get("uid"))
    if uid is not None and uid > _INT_MAX:
        uid = None
    user = e.get("UID") or (_user_name(uid) if uid is not None else None)
    success = {"yes": True, "no": False}.get(f.get("success", ""))
    return {
        "source": "auditd",
        "action": action,
        "path": path,
        "user": user if user != "unset" else None,
        "uid": uid,
        "pid": pid if pid <= _INT_MAX else None,
        "exe": _text(f, "exe"),
        "success": success,
        "run_id": None,
        "detail": {k: v for k, v in detail.items() if v is not None},
    }


class AuditdSource:
    """Follows the audit log (see the module docstring). Needs read access to
    it: auditd writes it 0600 root, or 0640 group `log_group`."""

    name = "auditd"

    def __init__(
        self, config: AuditdConfig, node: str, state_dir: str | Path | None = None
    ) -> None:
        self.config = config
        self.node = node
        self.state_dir = state_dir
        self.stats = SourceStats()
        self.stream = f"access/{node}/auditd"

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if not sys.platform.startswith("linux"):
            self.stats.detail = "the Linux audit log exists only on Linux"
            log.warning("auditd source disabled: not Linux", platform=sys.platform)
            return
        tail = Tail(self.config.path, state_file(self.state_dir, self.name))
        if not open_tail(self.name, tail, self.stats, log):
            return
        done = tail.extra.get("done")
        parser = AuditParser(
            self.config.keys,
            self.stats,
            eoe_timeout_s=self.config.group_timeout_s,
            done=[d for d in done if isinstance(d, str)] if isinstance(done, list) else (),
        )

        def parse(lines: list[Line]) -> list[dict[str, Any]]:
            found = [ev for line in lines for ev in parser.feed(line.text, line.start)]
            found += parser.flush()
            tail.extra = {"done": parser.done_ids()}  # saved with the position
            return [event("AccessEvent", self.stream, self.node, b, t) for t, b in found]

        follow(tail, emit, stop, self.stats, log, self.config.poll_s, parse, parser.pending_start)
