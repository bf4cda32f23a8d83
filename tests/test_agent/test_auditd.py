"""The auditd parser and source on real-format audit.log excerpts."""

from __future__ import annotations

import os
import pwd
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.sources.auditd import AuditdConfig, AuditdSource, AuditParser, parse_record
from schemas import default_registry, encode
from tests.samples import envelope

DATA = Path(__file__).resolve().parents[1] / "data"
# `-w /data -p rwa -k traintrail-data` and `-w /ckpt -p wa -k traintrail-ckpt` on x86_64, as
# auditd 3.x writes them with log_format = RAW: an open, a create through a relative name,
# a sudo USER_CMD (not a syscall event), then a denied open (hex name) interleaved with a
# rename whose key field is hex (two keys).
RAW = (DATA / "audit-raw.log").read_text()
# An unlinkat with log_format = ENRICHED: a 0x1d byte, then resolved names.
ENRICHED = (DATA / "audit-enriched.log").read_text()

MALFORMED = [
    "type=SYSCALL msg=audit(1700000004.9",  # torn line
    "----",
    "audit: backlog limit exceeded",
    # a complete-looking group whose SYSCALL has no syscall number
    "type=SYSCALL msg=audit(1700000004.100:4590): arch=c000003e success=yes pid=1 uid=0",
    "type=EOE msg=audit(1700000004.100:4590): ",
]


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _feed(parser: AuditParser, text: str) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    for line in text.split("\n"):
        out += parser.feed(line, now=0.0)
    return out


def _encodes(body: dict[str, Any]) -> None:
    encode(default_registry(), "AccessEvent", {**body, "envelope": envelope("access/n/auditd")})


class TestParseRecord:
    def test_fields_and_identity(self) -> None:
        rec = parse_record(RAW.splitlines()[0])
        assert rec is not None
        assert (rec.type, rec.id, rec.time_us) == (
            "SYSCALL",
            "1700000000.123:4567",
            1700000000123000,
        )
        assert rec.fields["syscall"] == "257" and rec.fields["comm"] == '"python3"'
        assert rec.enriched == {}

    def test_enriched_section_is_separate(self) -> None:
        rec = parse_record(ENRICHED.split("\n")[0])
        assert rec is not None
        assert rec.fields["key"] == '"traintrail-ckpt"'
        assert rec.enriched["SYSCALL"] == "unlinkat" and rec.enriched["UID"] == "alice"

    def test_node_prefix_and_syslog_forwarding(self) -> None:
        line = "Nov 23 04:10:01 gpu-01 audisp-syslog: node=gpu-01 type=EOE msg=audit(1.002:3): "
        rec = parse_record(line)
        assert rec is not None and rec.id == "1.002:3" and rec.time_us == 1_002_000

    def test_not_a_record(self) -> None:
        assert parse_record("type=SYSCALL msg=audit(1700000004.9") is None


class TestAuditParser:
    def test_real_excerpt(self) -> None:
        parser = AuditParser()
        out = _feed(parser, RAW)
        assert parser.stats.skipped == 0
        by_serial = {b["detail"]["serial"].split(":")[1]: (t, b) for t, b in out}
        assert sorted(by_serial) == ["4567", "4568", "4570", "4571"]  # USER_CMD is not one
        for _, body in out:
            _encodes(body)

        t, read = by_serial["4567"]
        assert t == 1700000000123000
        assert read["action"] == "open" and read["path"] == "/data/train.csv"
        assert (read["uid"], read["pid"], read["exe"], read["success"]) == (
            4201, 4242, "/usr/bin/python3.11", True,
        )  # fmt: skip
        assert read["user"] == _user(4201) and read["run_id"] is None
        d = read["detail"]
        assert d["proctitle"] == "python3 train.py --epochs 3"
        assert (d["auid"], d["syscall"], d["syscall_name"], d["key"]) == (
            "4201", "257", "openat", "traintrail-data",
        )  # fmt: skip
        assert (d["comm"], d["cwd"], d["exit"]) == ("python3", "/home/alice/proj", "3")

        # relative name with O_WRONLY|O_CREAT|O_TRUNC, resolved against CWD
        _, create = by_serial["4568"]
        assert create["action"] == "create"
        assert create["path"] == "/ckpt/run-7/step_100.pt"

        # denied (EACCES), hex-encoded name with a space, interleaved with 4571
        _, denied = by_serial["4570"]
        assert denied["success"] is False and denied["action"] == "open"
        assert denied["path"] == "/data/my file.csv"
        assert denied["detail"]["exit"] == "-13" and denied["detail"]["errno"] == "EACCES"
        assert denied["detail"]["proctitle"] == "cat /data/my file.csv"

        _, move = by_serial["4571"]
        assert move["action"] == "move" and move["path"] == "/data/a.csv"
        assert (move["detail"]["from"], move["detail"]["to"]) == ("/data/a.csv", "/data/b.csv")
        assert move["detail"]["key"] == "traintrail-data,traintrail-ckpt"  # hex, two keys
        assert move["detail"]["auid"] == "unset" and "auid_user" not in move["detail"]
        assert move["uid"] == 0 and move["user"] == _user(0)

    def test_enriched_format(self) -> None:
        parser = AuditParser()
        [(_, body)] = _feed(parser, ENRICHED)
        _encodes(body)
        assert body["action"] == "delete" and body["path"] == "/ckpt/old.pt"
        assert body["user"] == "alice"  # from the enriched UID, not this host's passwd
        assert body["detail"]["auid_user"] == "alice"
        assert body["detail"]["arch"] == "x86_64"
        assert body["detail"]["proctitle"] == "rm -f /ckpt/old.pt"

    def test_malformed_lines_are_counted_not_fatal(self) -> None:
        parser = AuditParser()
        out = _feed(parser, "\n".join(MALFORMED) + "\n" + RAW)
        assert parser.stats.skipped == 4  # 3 unparsable lines + 1 group without syscall
        assert len(out) == 4

    def test_keys_filter(self) -> None:
        parser = AuditParser(keys=("traintrail-ckpt",))
        out = _feed(parser, RAW + ENRICHED)
        assert sorted(b["detail"]["serial"] for _, b in out) == [
            "1700000001.500:4568", "1700000002.201:4571", "1700000003.050:4580",
        ]  # fmt: skip

    def test_group_without_eoe_ends_by_audit_time_or_idle_timeout(self) -> None:
        lines = RAW.splitlines()[:4]  # 4567 without its EOE
        parser = AuditParser(eoe_timeout_s=2.0)
        for line in lines:
            assert parser.feed(line, now=10.0) == []
        assert parser.flush(now=11.0) == []
        [(_, body)] = parser.flush(now=12.5)
        assert body["path"] == "/data/train.csv"

        parser = AuditParser(eoe_timeout_s=2.0)
        for line in lines:
            parser.feed(line, now=10.0)
        later = "type=EOE msg=audit(1700000005.000:4999): "  # audit time moved on by 5 s
        [(_, body)] = parser.feed(later, now=10.0)
        assert body["detail"]["serial"] == "1700000000.123:4567"

    def test_quoted_hex_lookalike_is_literal(self) -> None:
        group = [
            "type=SYSCALL msg=audit(1700000006.000:4600): arch=c00000b7 syscall=56 success=yes "
            "exit=3 a0=ffffff9c a1=ffffc1d0 a2=80000 a3=0 items=1 ppid=1 pid=77 auid=0 uid=0 "
            'comm="cat" exe="/usr/bin/cat" key=(null)',
            'type=PATH msg=audit(1700000006.000:4600): item=0 name="CAFE" nametype=NORMAL',
            'type=CWD msg=audit(1700000006.000:4600): cwd="/srv"',
            "type=EOE msg=audit(1700000006.000:4600): ",
        ]
        [(_, body)] = _feed(AuditParser(), "\n".join(group))
        assert body["path"] == "/srv/CAFE"  # not bytes.fromhex("CAFE")
        assert body["action"] == "open" and body["detail"]["syscall_name"] == "openat"  # aarch64
        assert "key" not in body["detail"]

    def test_done_ids_are_not_emitted_again(self) -> None:
        parser = AuditParser(done=["1700000000.123:4567"])
        out = _feed(parser, RAW)
        assert "1700000000.123:4567" not in {b["detail"]["serial"] for _, b in out}


def _run(source: AuditdSource) -> tuple[list[dict[str, Any]], threading.Event, threading.Thread]:
    got: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(got.extend, stop), daemon=True)
    thread.start()
    return got, stop, thread


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class TestAuditdSource:
    def test_follows_the_log_and_resumes_after_restart(self, tmp_path: Path) -> None:
        log_file = tmp_path / "audit.log"
        log_file.write_text("type=EOE msg=audit(1699999999.000:1): \n")  # before the agent
        config = AuditdConfig(path=str(log_file), poll_s=0.02)
        state = tmp_path / "state"
        source = AuditdSource(config, "gpu-01", state_dir=state)
        got, stop, thread = _run(source)
        _wait(lambda: source.stats.alive)
        lines = RAW.splitlines(keepends=True)
        with log_file.open("a") as fh:
            fh.writelines(lines[:12])  # 4567 and 4568 complete, USER_CMD
            fh.write(lines[12][:40])  # a torn line: waits for the rest
            fh.flush()
            _wait(lambda: len(got) == 2)
            fh.write(lines[12][40:])
            fh.writelines(lines[13:20])  # 4570 and 4571 started, not finished
        time.sleep(0.2)
        stop.set()
        thread.join(2)
        assert not thread.is_alive() and len(got) == 2
        assert {e["stream"] for e in got} == {"access/gpu-01/auditd"}
        assert {e["key"] for e in got} == {"gpu-01"}
        assert got[0]["type"] == "AccessEvent" and got[0]["time_us"] == 1700000000123000

        with log_file.open("a") as fh:  # written while the agent is down
            fh.writelines(lines[20:])
        source = AuditdSource(config, "gpu-01", state_dir=state)
        again, stop, thread = _run(source)
        _wait(lambda: len(again) == 2)
        time.sleep(0.1)
        stop.set()
        thread.join(2)
        serials = sorted(e["body"]["detail"]["serial"] for e in again)
        assert serials == ["1700000002.200:4570", "1700000002.201:4571"]  # none twice, none lost
        for e in got + again:
            _encodes(e["body"])

    def test_missing_log_disables_the_source(self, tmp_path: Path) -> None:
        source = AuditdSource(AuditdConfig(path=str(tmp_path / "nope.log")), "n")
        source.run(lambda events: None, threading.Event())  # returns at once
        assert "does not exist" in source.stats.detail and not source.stats.alive

    def test_unreadable_log_disables_the_source(self, tmp_path: Path) -> None:
        log_file = tmp_path / "audit.log"
        log_file.write_text("")
        log_file.chmod(0)
        if os.geteuid() == 0:
            pytest.skip("root reads anything")
        source = AuditdSource(AuditdConfig(path=str(log_file)), "n")
        source.run(lambda events: None, threading.Event())
        assert "permission" in source.stats.detail

    def test_config_validation(self) -> None:
        with pytest.raises(ValueError):
            AuditdConfig(poll_s=0)
