"""SSH logins and sudo from the auth log → AccessEvents.

Reads the file rsyslog writes for the `auth,authpriv` facilities:
`/var/log/auth.log` on Debian/Ubuntu, `/var/log/secure` on RHEL/Rocky/Fedora
(set `AuthLogConfig.path`). Both line formats rsyslog and journald use:

    Nov 23 04:10:01 gpu-01 sshd[1234]: Accepted publickey for alice from 10.0.0.5 port 51234 ...
    2026-11-23T04:10:01.123456+00:00 gpu-01 sshd[1234]: Accepted publickey for alice ...

(the second is Debian 12's RSYSLOG_FileFormat and `journalctl -o short-iso`;
an RFC 5424 line with its `<PRI>1` header is read too). A classic syslog
timestamp has no year or zone: it is taken as the node's local time in the
most recent year that does not put it more than a day in the future.

sshd (and OpenSSH ≥ 9.8's sshd-session/sshd-auth): Accepted
password/publickey/keyboard-interactive/... → "ssh_login"; Failed ... (also
"for invalid user") → "ssh_login_failed"; Invalid user → "ssh_invalid_user";
Disconnected from user → "ssh_logout"; pam_unix session opened/closed →
"session_open"/"session_close". sudo: `alice : TTY=... ; COMMAND=...` →
"sudo" (exe = the command's program, path = its first absolute-path
argument); with a reason first ("3 incorrect password attempts", "user NOT in
sudoers", "command not allowed") → "sudo_denied"; pam_unix(sudo:session)
opened/closed → "session_open"/"session_close" (user = who ran sudo,
detail runas = the target user). Lines of other programs are ignored; sshd/
sudo lines that are known noise (connection chatter, pam auth details) are
ignored; other sshd/sudo lines, and lines with no syslog header, are counted
skipped.
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from agent.sources.base import Emit, SourceStats, event
from agent.sources.tail import Line, Tail, follow, open_tail, state_file

__all__ = ["AuthLogConfig", "AuthLogParser", "AuthLogSource", "parse_time"]

log = structlog.get_logger("traintrail.sources.authlog")

_PROG = r"(?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?:"
_HEADERS = (
    re.compile(r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) " + _PROG),
    re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:?\d\d)?) (?P<host>\S+) " + _PROG),
    re.compile(
        r"^<\d{1,3}>1 (?P<ts>\S+) (?P<host>\S+) (?P<prog>\S+) (?P<pid>\d+|-) \S+ (?:-|\[.*?\])"
    ),
)
_SSHD = frozenset({"sshd", "sshd-session", "sshd-auth"})
_FROM = r"from (?P<ip>\S+) port (?P<port>\d+)"
_TAIL = r"(?: ssh2)?(?:: (?P<key>.+))?$"  # "ssh2: ED25519 SHA256:..." after publickey
_ACCEPTED = re.compile(rf"^Accepted (?P<method>\S+) for (?P<user>.+?) {_FROM}{_TAIL}")
_FAILED = re.compile(
    rf"^Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*?) ?{_FROM}{_TAIL}"
)
_INVALID = re.compile(r"^Invalid user (?P<user>.*?) ?from (?P<ip>\S+)(?: port (?P<port>\d+))?$")
_LOGOUT = re.compile(r"^Disconnected from user (?P<user>.+?) (?P<ip>\S+) port (?P<port>\d+)$")
_SESSION = re.compile(
    r"^pam_unix\((?P<service>[\w-]+):session\): session (?P<what>opened|closed) for user "
    r"(?P<user>[^\s(]+)(?:\(uid=(?P<uid>\d+)\))?"
    r"(?: by (?P<by>[^\s(]*)(?:\(uid=(?P<by_uid>\d+)\))?)?$"
)
_SUDO = re.compile(r"^(?P<user>\S+) : (?P<rest>.*)$")
_DENIALS = ("incorrect password", "NOT in sudoers", "not allowed", "password is required",
            "authentication failure", "no tty present", "unknown user")  # fmt: skip
_NOISE = (
    "Accepted key ", "Received disconnect", "Disconnected from ", "Disconnecting ",
    "Connection closed", "Connection reset", "Connection from", "Server listening",
    "Received signal", "PAM ", "error:",
    "fatal:", "Starting session", "Close session", "User child", "Postponed", "Timeout",
    "banner exchange", "Unable to negotiate", "Did not receive identification",
    "kex_exchange_identification", "maximum authentication attempts", "drop connection",
    "beginning MaxStartups", "exiting MaxStartups", "Bad protocol version", "Exiting",
    "Read error", "Transferred:", "Changed root", "subsystem request", "reverse mapping",
    "Nasty PTR", "Address ", "Authorized to", "userauth_", "ssh_dispatch_run_fatal",
    "srclimit_penalise", "Attempt to write login records", "syslogin_perform_logout",
    "rexec line", "debug", "unable to resolve host", "Set /proc/self/oom_score_adj",
)  # fmt: skip
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REPEATED = re.compile(r"^message repeated (?P<n>\d+) times: \[ ?(?P<msg>.*?) ?\]$")


@dataclass(frozen=True)
class AuthLogConfig:
    """Args:
    path: the auth log; /var/log/auth.log (Debian, Ubuntu) or /var/log/secure (RHEL).
    poll_s: how often to look for new lines."""

    path: str = "/var/log/auth.log"
    poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.poll_s <= 0:
            raise ValueError("authlog poll_s must be > 0")


def parse_time(ts: str, now: datetime | None = None) -> int:
    """A syslog or ISO 8601 timestamp → µs since the epoch."""
    now = now or datetime.now().astimezone()
    if ts[:4].isdigit():
        t = datetime.fromisoformat(ts)
        return _us(t if t.tzinfo else t.astimezone())
    for year in (now.year, now.year - 1, now.year - 4):  # Feb 29 of a past leap year
        try:
            t = datetime.strptime(f"{year} {ts}", "%Y %b %d %H:%M:%S").astimezone()
        except ValueError:
            continue
        if t <= now + timedelta(days=1):
            return _us(t)
    raise ValueError(f"bad syslog timestamp {ts!r}")


def _us(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(microseconds=1)  # exact, unlike float timestamps


class AuthLogParser:
    """Auth log lines in, (time_us, AccessEvent body) pairs out."""

    def __init__(self, stats: SourceStats | None = None) -> None:
        self.stats = stats if stats is not None else SourceStats()

    def feed(self, line: str, now: datetime | None = None) -> list[tuple[int, dict[str, Any]]]:
        if not line.strip():
            return []
        for header in _HEADERS:
            m = header.match(line)
            if m is not None:
                break
        else:
            self.stats.count(skipped=1)
            return []
        prog = m["prog"]
        if prog not in _SSHD and prog != "sudo":
            return []
        msg = line[m.end() :].strip()
        repeated = _REPEATED.match(msg)
        if repeated is not None:  # rsyslog folded identical lines into one
            msg = repeated["msg"]
        try:
            time_us = parse_time(m["ts"], now)
            body = self._sshd(msg) if prog in _SSHD else self._sudo(msg)
        except ValueError:
            body = None
        if body is None:
            if not _is_noise(msg):
                self.stats.count(skipped=1)
            return []
        if not body:  # recognised, nothing to record
            return []
        pid = m["pid"]
        body["pid"] = int(pid) if pid and pid.isdigit() else None
        body["detail"]["raw_host"] = m["host"]
        body["detail"]["program"] = prog
        body["detail"]["repeated"] = repeated["n"] if repeated is not None else None
        body["detail"] = {k: v for k, v in body["detail"].items() if v not in (None, "")}
        return [(time_us, body)]

    def _sshd(self, msg: str) -> dict[str, Any] | None:
        if m := _ACCEPTED.match(msg):
            return _body("ssh_login", m["user"], True, m, method=m["method"], key=m["key"])
        if m := _FAILED.match(msg):
            invalid = "true" if m["invalid"] else None
            return _body(
                "ssh_login_failed", m["user"] or None, False, m,
                method=m["method"], key=m["key"], invalid_user=invalid,
            )  # fmt: skip
        if m := _INVALID.match(msg):
            return _body("ssh_invalid_user", m["user"] or None, False, m)
        if m := _LOGOUT.match(msg):
            return _body("ssh_logout", m["user"], None, m)
        return _session(msg)

    def _sudo(self, msg: str) -> dict[str, Any] | None:
        m = _SUDO.match(msg)
        if m is None:
            return _session(msg)
        rest, sep, command = m["rest"].partition("COMMAND=")
        if not sep:
            return None
        reasons: list[str] = []
        values: dict[str, str] = {}
        for part in rest.split(";"):
            key, eq, value = part.strip().partition("=")
            if eq and key.isupper():
                values[key] = value
            elif part.strip():
                reasons.append(part.strip())
        reason = "; ".join(reasons) or None
        if reason and not any(d in reason for d in _DENIALS):
            return None
        argv = command.split()
        exe = argv[0] if argv and argv[0].startswith("/") else None
        target = next((a for a in argv[1:] if a.startswith("/")), None)
        body = _body(
            "sudo_denied" if reason else "sudo", m["user"], not reason, None,
            tty=values.get("TTY"), pwd=values.get("PWD"), runas=values.get("USER"),
            group=values.get("GROUP"), command=command, reason=reason,
        )  # fmt: skip
        body["exe"], body["path"] = exe, target
        return body


def _is_noise(msg: str) -> bool:
    """Known sshd/sudo chatter: recognised, not an access, not malformed."""
    if msg.startswith("pam_"):  # pam auth details, pam_systemd, ...; not pam_unix sessions
        return ":session): session " not in msg
    return msg.startswith(_NOISE)


def _session(msg: str) -> dict[str, Any] | None:
    m = _SESSION.match(msg)
    if m is None:
        return None
    by = m["by"] or None
    if m["what"] == "closed":
        return _body("session_close", m["user"], None, None, service=m["service"])
    if by:  # sudo/su: `by` ran it as `user`
        body = _body("session_open", by, True, None, service=m["service"], runas=m["user"])
        body["uid"] = _uid(m["by_uid"])
        return body
    body = _body("session_open", m["user"], True, None, service=m["service"])
    body["uid"] = _uid(m["uid"])
    return body


def _uid(text: str | None) -> int | None:
    return int(text) if text and int(text) < 2**31 else None


def _body(
    action: str, user: str | None, success: bool | None, m: re.Match[str] | None, **detail: Any
) -> dict[str, Any]:
    if m is not None:
        detail["from_ip"] = m["ip"]
        detail["port"] = m["port"]
    return {
        "source": "authlog",
        "action": action,
        "path": None,
        "user": user,
        "uid": None,
        "pid": None,
        "exe": None,
        "success": success,
        "run_id": None,
        "detail": detail,
    }


class AuthLogSource:
    """Follows the auth log (see the module docstring); usually needs to run
    as root or in group `adm` (Debian) to read it."""

    name = "authlog"

    def __init__(
        self, config: AuthLogConfig, node: str, state_dir: str | Path | None = None
    ) -> None:
        self.config = config
        self.node = node
        self.state_dir = state_dir
        self.stats = SourceStats()
        self.stream = f"access/{node}/authlog"

    def run(self, emit: Emit, stop: threading.Event) -> None:
        if sys.platform == "win32":
            self.stats.detail = "there is no syslog auth log on Windows"
            log.warning("authlog source disabled: not a Unix system", platform=sys.platform)
            return
        tail = Tail(self.config.path, state_file(self.state_dir, self.name))
        if not open_tail(self.name, tail, self.stats, log):
            return
        parser = AuthLogParser(self.stats)

        def parse(lines: list[Line]) -> list[dict[str, Any]]:
            return [
                event("AccessEvent", self.stream, self.node, body, time_us)
                for line in lines
                for time_us, body in parser.feed(line.text)
            ]

        follow(tail, emit, stop, self.stats, log, self.config.poll_s, parse)
