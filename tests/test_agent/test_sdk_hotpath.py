"""The SDK's hot path: what `Run.log` does (and does not do) in the training thread,
signals, and back-pressure; against the real unix-socket stand-in of test_sdk.

No timings here: the cost of `log` is measured in bench/sdk_log_cost.py.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import agent.sdk as traintrail
from tests.test_agent import test_sdk as base
from tests.test_agent.test_sdk import REPO, AgentStandIn, points

sock_dir = base.sock_dir  # the fixtures of test_sdk, by name
spool_dir = base.spool_dir
agent = base.agent


class FakeTensor:
    """A one-element device tensor: `.item()` would sync the device, so it records who calls."""

    def __init__(self, value: float, calls: list[int], *, requires_grad: bool = False) -> None:
        self.value, self.calls, self.requires_grad = value, calls, requires_grad
        self.detached_from: FakeTensor | None = None
        self.n = 1

    def numel(self) -> int:
        return self.n

    def detach(self) -> FakeTensor:
        out = FakeTensor(self.value, self.calls)
        out.detached_from = self
        return out

    def item(self) -> float:
        self.calls.append(threading.get_ident())
        return self.value


def test_numpy_now_tensors_later_and_never_in_the_training_thread(agent: AgentStandIn) -> None:
    np = pytest.importorskip("numpy")
    calls: list[int] = []
    graph = FakeTensor(0.25, calls, requires_grad=True)
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"np32": np.float32(1.5), "np64": np.float64(2.0), "t": FakeTensor(3.0, calls)})
        run.log({"loss": graph, "arr": np.array([4.0])})
        kept = run._client.buf[-1]  # what the training thread buffered
        assert isinstance(kept, tuple)
        buffered: Any = kept[2]["loss"].obj
        assert buffered.detached_from is graph  # detached: the autograd graph is not kept
        assert calls == []  # nothing read in the training thread
        big = FakeTensor(1.0, calls)
        big.n = 3
        with pytest.raises(ValueError, match="scalar"):
            run.log({"x": big})  # size checked without reading the value
    assert calls and threading.get_ident() not in calls
    assert points(agent.events()) == [
        (0, "np32", 1.5), (0, "np64", 2.0), (0, "t", 3.0), (1, "loss", 0.25), (1, "arr", 4.0),
    ]  # fmt: skip
    (finished,) = agent.events("RunFinished")
    assert finished["body"]["summary"] == {
        "np32": 1.5, "np64": 2.0, "t": 3.0, "loss": 0.25, "arr": 4.0
    }  # fmt: skip


def test_caller_may_reuse_its_dict(agent: AgentStandIn) -> None:
    metrics = {"loss": 1.0}
    with traintrail.start_run("p", socket_path=agent.path) as run:
        for i in range(3):
            metrics["loss"] = float(i)
            run.log(metrics)
    assert points(agent.events()) == [(0, "loss", 0.0), (1, "loss", 1.0), (2, "loss", 2.0)]


def test_nan_and_inf_reach_the_agent_from_every_kind_of_value(agent: AgentStandIn) -> None:
    np = pytest.importorskip("numpy")
    calls: list[int] = []
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log(
            {
                "nan": math.nan,
                "np_inf": np.float32("inf"),
                "t_ninf": FakeTensor(-math.inf, calls),
                "t_nan": FakeTensor(math.nan, calls),
            },
            step=3,
        )
    got = {name: value for _, name, value in points(agent.events())}
    assert math.isnan(got["nan"]) and math.isnan(got["t_nan"])
    assert got["np_inf"] == math.inf and got["t_ninf"] == -math.inf
    summary = agent.events("RunFinished")[0]["body"]["summary"]
    assert math.isnan(summary["nan"]) and summary["np_inf"] == math.inf


def test_unreadable_tensor_is_dropped_in_the_sender_not_raised(
    agent: AgentStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")

    class Broken:
        def item(self) -> float:
            raise RuntimeError("CUDA error: device-side assert triggered")

    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"ok": 1.0, "bad": Broken()})
        run.log({"ok": 2.0, 7: 1.0, "": 2.0})  # type: ignore[dict-item]  # bad names
    assert points(agent.events()) == [(0, "ok", 1.0), (1, "ok", 2.0)]
    assert run.dropped_points == 3
    assert sum("device-side assert" in r.getMessage() for r in caplog.records) == 1


def test_agent_gone_and_bound_reached_drops_oldest_keeps_events(
    sock_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")
    blocker = tmp_path / "file"
    blocker.write_text("")  # the spool directory cannot be created: lines stay in memory
    monkeypatch.setenv("TRAINTRAIL_SDK_SPOOL_DIR", str(blocker / "spool"))
    path = str(sock_dir / "agent.sock")
    ckpt = tmp_path / "m.bin"
    ckpt.write_bytes(b"weights")
    run = traintrail.start_run("p", socket_path=path)
    run._client.max_points = 1000
    n = 30_000
    for i in range(n):
        run.log({"loss": float(i)})  # never raises, never blocks
        if i == n // 2:
            run.log_checkpoint(ckpt, step=i)
    assert run.dropped_points > 0
    server = AgentStandIn(path)
    try:
        run.finish(timeout=20)
        events = server.events()
        assert [e["type"] for e in events if e["type"] != "Metrics"] == [
            "RunStarted", "CheckpointSaved", "RunFinished"
        ]  # fmt: skip
        got = [p[2] for p in points(events)]
        assert got == sorted(got) and got[-1] == float(n - 1)  # in order, the newest kept
        assert len(got) == n - run.dropped_points
        assert events[-1]["body"]["summary"] == {"loss": float(n - 1)}
    finally:
        server.close()
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1


LOOP = """
import signal, sys, agent.sdk as tt
# SIGINT as a script started from a terminal has it: a background job of a
# non-interactive shell (CI runners, `cmd &` in a script) inherits it ignored,
# and the SDK rightly leaves an ignored SIGINT alone.
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.argv[2] == "user":
    def mine(signum, frame):
        print("user handler", flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, mine)
run = tt.start_run("p", socket_path=sys.argv[1])
step = 0
try:
    while True:
        run.log({"loss": 1.0 / (step + 1)})
        if step == 100:
            print("ready", flush=True)
        step += 1
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    raise
"""


def _signalled(agent: AgentStandIn, mode: str, signum: int) -> tuple[int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP, agent.path, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the signal did not end it: never leave it spinning
            proc.kill()
            proc.communicate()
    return proc.returncode, out + err


def test_sigterm_finishes_killed_and_exits_143(agent: AgentStandIn) -> None:
    code, output = _signalled(agent, "plain", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, output
    (finished,) = agent.events("RunFinished")
    assert finished["body"]["status"] == "killed"
    assert finished["body"]["error"] == "killed by SIGTERM"
    assert "loss" in finished["body"]["summary"]
    assert agent.events()[-1]["type"] == "RunFinished"


def test_sigint_finishes_killed_and_still_raises_keyboardinterrupt(agent: AgentStandIn) -> None:
    code, output = _signalled(agent, "plain", signal.SIGINT)
    assert "KeyboardInterrupt" in output and code != 0, output
    (finished,) = agent.events("RunFinished")
    assert finished["body"]["status"] == "killed"
    assert finished["body"]["error"] == "killed by SIGINT"


def _script(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` as a training script from the repository, with `env` added."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


HOLDING_A_LOCK = """
import os, signal, sys, agent.sdk as tt
run = tt.start_run("p", socket_path=sys.argv[1])
for i in range(1000):
    run.log({"loss": 1.0 / (i + 1)})
# The signal lands while the main thread holds the lock of the sender's wake-up
# Event, as when it arrives inside Event.set(): the sender and the hash worker
# both need that lock to finish the run.
with run._client._wake._cond:
    os.kill(os.getpid(), signal.SIGTERM)
    print("handler returned", flush=True)  # never: the handler must raise at once
"""


def test_signal_inside_a_held_lock_still_finishes_the_run(agent: AgentStandIn) -> None:
    """The handler must not wait for the finish (it would wait for the lock its
    own thread holds): it raises, unwinding releases the lock, and the exit
    waits for the finish."""
    done = _script(HOLDING_A_LOCK, agent.path)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "handler returned" not in done.stdout
    (finished,) = agent.events("RunFinished")
    assert finished["body"]["status"] == "killed"
    assert finished["body"]["summary"] == {"loss": 1.0 / 1000}
    assert len(points(agent.events())) == 1000


def test_users_own_sigterm_handler_is_left_in_charge(agent: AgentStandIn) -> None:
    code, output = _signalled(agent, "user", signal.SIGTERM)
    assert "user handler" in output and code == 7, output
    assert len(agent.events("RunFinished")) == 1  # its sys.exit: finished at exit


def test_handlers_only_in_the_main_thread_and_over_the_default() -> None:
    script = """
import signal, threading, sys, agent.sdk as tt
from agent.sdk import signals
t = threading.Thread(target=tt.start_run, args=("p",), kwargs={"socket_path": sys.argv[1]})
t.start(); t.join()
assert signals.installed() == frozenset(), signals.installed()
signal.signal(signal.SIGINT, signal.SIG_IGN)
tt.start_run("p", socket_path=sys.argv[1])
assert signals.installed() == {signal.SIGTERM}, signals.installed()
assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
"""
    done = _script(script, "/nonexistent/agent.sock", TRAINTRAIL_SDK_SPOOL_DIR="/nonexistent/spool")
    assert done.returncode == 0, done.stderr


FORKED = """
import os, signal, sys, time, agent.sdk as tt
run = tt.start_run("p", socket_path=sys.argv[1])
run.log({"loss": 2.0})
pid = os.fork()
if pid == 0:  # a forked worker (a DataLoader's, say) that is terminated
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # never: the handler ends the child at once
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), flush=True)
run.log({"loss": 1.0})
run.finish()
"""


def test_a_forked_child_killed_leaves_the_parents_run_alone(agent: AgentStandIn) -> None:
    done = _script(FORKED, agent.path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(128 + signal.SIGTERM)]
    (finished,) = agent.events("RunFinished")
    assert finished["body"]["status"] == "finished"
    assert finished["body"]["summary"] == {"loss": 1.0}


def test_default_steps_continue_from_the_last_explicit_one(agent: AgentStandIn) -> None:
    """No step: the previous one + 1, from 0; after an explicit step, from it; and
    threads logging without a step at once never share one."""
    np = pytest.importorskip("numpy")
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"a": 1.0})
        run.log({"a": 2.0})
        run.log({"a": 3.0}, step=10)
        run.log({"a": 4.0})
        run.log({"a": 5.0}, step=np.int64(20))
        start = threading.Barrier(4)

        def many() -> None:
            start.wait()
            for _ in range(500):
                run.log({"b": 1.0})

        threads = [threading.Thread(target=many) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert run.flush(30)
    got = points(agent.events())
    assert [s for s, name, _ in got if name == "a"] == [0, 1, 10, 11, 20]
    assert sorted(s for s, name, _ in got if name == "b") == list(range(21, 2021))
