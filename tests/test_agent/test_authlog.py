"""The auth log parser on real sshd and sudo lines, in syslog and ISO formats."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.sources.authlog import AuthLogConfig, AuthLogParser, AuthLogSource, parse_time
from schemas import default_registry, encode
from tests.samples import envelope

NOW = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
SYSLOG = "Nov 23 04:10:01 gpu-01 "
ISO = "2026-11-23T04:10:01.123456+00:00 gpu-01 "

# (program[pid]: message, action, user, success, pid, path, detail subset)
CASES: list[tuple[str, str, str | None, bool | None, int | None, str | None, dict[str, str]]] = [
    (
        "sshd[1234]: Accepted publickey for alice from 10.0.0.5 port 51234 ssh2: "
        "ED25519 SHA256:Xf3kq1mJ0mV0Kk0wq8M3vB7bqkQm6nUzY1a2b3c4d5E",
        "ssh_login", "alice", True, 1234, None,
        {"from_ip": "10.0.0.5", "port": "51234", "method": "publickey",
         "key": "ED25519 SHA256:Xf3kq1mJ0mV0Kk0wq8M3vB7bqkQm6nUzY1a2b3c4d5E"},
    ),
    (
        "sshd[1301]: Accepted password for bob from 192.168.1.20 port 40022 ssh2",
        "ssh_login", "bob", True, 1301, None, {"method": "password", "from_ip": "192.168.1.20"},
    ),
    (
        "sshd-session[1320]: Accepted keyboard-interactive/pam for carol from 2001:db8::7 "
        "port 52000 ssh2",
        "ssh_login", "carol", True, 1320, None,
        {"method": "keyboard-interactive/pam", "from_ip": "2001:db8::7", "program": "sshd-session"},
    ),
    (
        "sshd[1333]: Failed password for alice from 10.0.0.9 port 60222 ssh2",
        "ssh_login_failed", "alice", False, 1333, None, {"from_ip": "10.0.0.9", "port": "60222"},
    ),
    (
        "sshd[1340]: Failed password for invalid user admin from 203.0.113.7 port 4242 ssh2",
        "ssh_login_failed", "admin", False, 1340, None, {"invalid_user": "true"},
    ),
    (
        "sshd[1340]: Invalid user admin from 203.0.113.7 port 4242",
        "ssh_invalid_user", "admin", False, 1340, None, {"from_ip": "203.0.113.7"},
    ),
    (
        "sshd[1350]: message repeated 2 times: [ Failed password for root from 198.51.100.3 "
        "port 39000 ssh2]",
        "ssh_login_failed", "root", False, 1350, None, {"repeated": "2"},
    ),
    (
        "sshd[1234]: pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
        "session_open", "alice", True, 1234, None, {"service": "sshd"},
    ),
    (
        "sshd[1234]: Disconnected from user alice 10.0.0.5 port 51234",
        "ssh_logout", "alice", None, 1234, None, {"from_ip": "10.0.0.5", "port": "51234"},
    ),
    (
        "sshd[1234]: pam_unix(sshd:session): session closed for user alice",
        "session_close", "alice", None, 1234, None, {"service": "sshd"},
    ),
    (
        "sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/cat /data/x",
        "sudo", "alice", True, None, "/data/x",
        {"tty": "pts/0", "pwd": "/home/alice", "runas": "root", "command": "/usr/bin/cat /data/x"},
    ),
    (
        "sudo[2210]: pam_unix(sudo:session): session opened for user root(uid=0) "
        "by alice(uid=1000)",
        "session_open", "alice", True, 2210, None, {"service": "sudo", "runas": "root"},
    ),
    (
        "sudo: pam_unix(sudo:session): session closed for user root",
        "session_close", "root", None, None, None, {"service": "sudo"},
    ),
    (
        "sudo:      bob : 3 incorrect password attempts ; TTY=pts/1 ; PWD=/home/bob ; USER=root ; "
        "COMMAND=/usr/bin/rm -rf /data/train",
        "sudo_denied", "bob", False, None, "/data/train",
        {"reason": "3 incorrect password attempts", "runas": "root"},
    ),
    (
        "sudo:  mallory : user NOT in sudoers ; TTY=pts/2 ; PWD=/tmp ; USER=root ; "
        "COMMAND=/bin/cat /etc/shadow",
        "sudo_denied", "mallory", False, None, "/etc/shadow", {"reason": "user NOT in sudoers"},
    ),
]  # fmt: skip

IGNORED = [  # other programs, and sshd/sudo chatter that is not an access
    "CRON[2001]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    "systemd-logind[800]: New session 5 of user alice.",
    "sshd[1234]: Received disconnect from 10.0.0.5 port 51234:11: disconnected by user",
    "sshd[1340]: Connection closed by invalid user admin 203.0.113.7 port 4242 [preauth]",
    "sshd[1340]: pam_unix(sshd:auth): check pass; user unknown",
    "sudo: pam_unix(sudo:auth): authentication failure; logname=bob uid=1001 euid=0 "
    "tty=/dev/pts/1 ruser=bob rhost=  user=bob",
    "sshd[900]: Server listening on 0.0.0.0 port 22.",
]
MALFORMED = [
    SYSLOG + "sshd[1400]: Accepted publickey for",  # torn
    SYSLOG + "sshd[1401]: Something sshd never says",
    SYSLOG + "sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root",  # no COMMAND
    "this is not a syslog line",
    "Nov 99 04:10:01 gpu-01 sshd[1]: Accepted password for a from 1.2.3.4 port 1 ssh2",
]


def _encodes(body: dict[str, Any]) -> None:
    encode(default_registry(), "AccessEvent", {**body, "envelope": envelope("access/n/authlog")})


@pytest.mark.parametrize("prefix", [SYSLOG, ISO], ids=["syslog", "iso"])
@pytest.mark.parametrize("case", CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(CASES)])
def test_each_line_kind(prefix: str, case: tuple[Any, ...]) -> None:
    message, action, user, success, pid, path, detail = case
    parser = AuthLogParser()
    [(time_us, body)] = parser.feed(prefix + message, now=NOW)
    _encodes(body)
    assert parser.stats.skipped == 0
    assert (body["source"], body["action"], body["user"]) == ("authlog", action, user)
    assert (body["success"], body["pid"], body["path"]) == (success, pid, path)
    assert body["detail"]["raw_host"] == "gpu-01"
    assert detail.items() <= body["detail"].items()
    assert body["run_id"] is None
    if prefix == ISO:
        assert time_us == 1795407001123456
    else:  # syslog time is the node's local time
        assert time_us == int(datetime(2026, 11, 23, 4, 10, 1).astimezone().timestamp() * 1e6)


def test_rfc5424_line() -> None:
    line = (
        "<38>1 2026-11-23T04:10:01.123456+00:00 gpu-01 sshd 1234 - - "
        "Accepted publickey for alice from 10.0.0.5 port 51234 ssh2: ED25519 SHA256:abc"
    )
    [(t, body)] = AuthLogParser().feed(line)
    assert body["action"] == "ssh_login" and body["pid"] == 1234 and t == 1795407001123456


def test_sudo_exe_and_session_uid() -> None:
    parser = AuthLogParser()
    [(_, sudo)] = parser.feed(SYSLOG + CASES[10][0], now=NOW)
    assert sudo["exe"] == "/usr/bin/cat"
    [(_, opened)] = parser.feed(SYSLOG + CASES[11][0], now=NOW)
    assert opened["uid"] == 1000
    [(_, ssh)] = parser.feed(SYSLOG + CASES[7][0], now=NOW)
    assert ssh["uid"] == 1000


def test_other_programs_and_noise_are_ignored_not_skipped() -> None:
    parser = AuthLogParser()
    for message in IGNORED:
        for prefix in (SYSLOG, ISO):
            assert parser.feed(prefix + message, now=NOW) == []
    assert parser.stats.skipped == 0


def test_malformed_lines_are_skipped_and_counted() -> None:
    parser = AuthLogParser()
    for line in MALFORMED:
        assert parser.feed(line, now=NOW) == []
    assert parser.stats.skipped == len(MALFORMED)
    [(_, body)] = parser.feed(SYSLOG + CASES[0][0], now=NOW)  # and the next line is fine
    assert body["action"] == "ssh_login"


def test_syslog_year_is_inferred() -> None:
    new_year = datetime(2027, 1, 1, 0, 0, 30).astimezone()
    t = parse_time("Dec 31 23:59:59", now=new_year)
    assert t == int(datetime(2026, 12, 31, 23, 59, 59).astimezone().timestamp() * 1e6)
    assert parse_time("Jan  1 00:00:10", now=new_year) < new_year.timestamp() * 1e6
    soon = new_year + timedelta(hours=2)  # clock skew: slightly in the future is this year
    assert parse_time(soon.strftime("%b %d %H:%M:%S"), now=new_year) > t


def test_source_follows_the_file(tmp_path: Path) -> None:
    log_file = tmp_path / "auth.log"
    log_file.write_text(SYSLOG + CASES[0][0] + "\n")  # before the agent: not sent
    source = AuthLogSource(AuthLogConfig(path=str(log_file), poll_s=0.02), "gpu-01", tmp_path)
    got: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(got.extend, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not source.stats.alive:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with log_file.open("a") as fh:
        for message in [c[0] for c in CASES[:3]] + IGNORED:
            fh.write(ISO + message + "\n")
        fh.write(MALFORMED[1] + "\n")
    while len(got) < 3 or source.stats.skipped < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    assert [e["body"]["user"] for e in got] == ["alice", "bob", "carol"]
    assert {(e["type"], e["stream"], e["key"]) for e in got} == {
        ("AccessEvent", "access/gpu-01/authlog", "gpu-01")
    }
    assert source.stats.emitted == 3 and source.stats.skipped == 1
    for e in got:
        _encodes(e["body"])


def test_missing_file_disables_the_source(tmp_path: Path) -> None:
    source = AuthLogSource(AuthLogConfig(path=str(tmp_path / "secure")), "n")
    source.run(lambda events: None, threading.Event())
    assert "does not exist" in source.stats.detail


def test_refused_emit_is_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    log_file = tmp_path / "auth.log"
    log_file.write_text("")
    config = AuthLogConfig(path=str(log_file), poll_s=0.02)

    def refuse(events: list[dict[str, Any]]) -> None:
        raise OSError("spool full")

    source = AuthLogSource(config, "gpu-01", tmp_path / "state")
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(refuse, stop), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not source.stats.alive:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    log_file.write_text(SYSLOG + CASES[1][0] + "\n")
    while source.stats.errors < 2:  # retried with backoff
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stop.set()
    thread.join(2)
    assert not thread.is_alive() and source.stats.emitted == 0

    got: list[dict[str, Any]] = []  # the agent restarts with a working spool
    source = AuthLogSource(config, "gpu-01", tmp_path / "state")
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(got.extend, stop), daemon=True)
    thread.start()
    while not got:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stop.set()
    thread.join(2)
    assert [e["body"]["user"] for e in got] == ["bob"]
