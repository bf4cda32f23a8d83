"""Alert latency: from `run.log` of a spiking value to the alert, under load.

Everything real and local: the broker, `traintrail collector run` (embedded
chDB, default settings but no cooldown, so every injected spike is its own
alert) and `traintrail-agent run` as processes; a load process logging
LOAD_POINTS points/s (20 metrics a step) through the SDK; and, in this
process, a training run that logs its loss 100 times a second and makes it
spike once a second, a consumer of the alerts topic, a webhook receiver, and
the run's own `on_alert` (the alert relayed back by the agent). For each
spike: seconds from the `run.log` call to the firing alert in the topic, at
the webhook, and back in the training process.

    python bench/alert_latency.py [SECONDS=60] [LOAD_POINTS=100000]
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import Consumer

from bench._kafka import REPO, bootstrap
from schemas import decode, default_registry

_LOAD = """
import sys, time
sys.path.insert(0, {repo!r})
from agent.sdk import start_run
socket_path, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
names = [f"m{{k:02d}}" for k in range(20)]
steps_per_s = rate / len(names)
with start_run("bench-load", "load", socket_path=socket_path) as run:
    t0 = time.monotonic()
    step = 0
    while time.monotonic() - t0 < seconds:
        due = int((time.monotonic() - t0) * steps_per_s)
        while step < due:
            run.log({{n: 1.0 / (step + 1) for n in names}}, step=step)
            step += 1
        time.sleep(0.005)
    print(step * len(names) / (time.monotonic() - t0), flush=True)
"""


class Arrivals:
    """First arrival time of each firing alert, by step, per channel."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at: dict[str, dict[int, float]] = {"topic": {}, "webhook": {}, "run": {}}

    def note(self, channel: str, alert: dict[str, Any], run_id: str) -> None:
        now = time.time()
        if alert.get("run_id") != run_id or alert.get("state") != "firing":
            return
        if alert.get("detector") != "spike" or alert.get("step") is None:
            return
        with self.lock:
            self.at[channel].setdefault(int(alert["step"]), now)


def webhook(arrivals: Arrivals, run_id: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            arrivals.note("webhook", body, run_id)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def watch_topic(
    servers: str, topic: str, arrivals: Arrivals, run_id: str, stop: threading.Event
) -> None:
    consumer = Consumer(
        {"bootstrap.servers": servers, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10}
    )  # fmt: skip
    consumer.subscribe([topic])
    reg = default_registry()
    while not stop.is_set():
        message = consumer.poll(0.05)
        if message is None or message.error() is not None:
            continue
        arrivals.note("topic", decode(reg, message.value() or b"").record, run_id)
    consumer.close()


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=out, cwd=log.parent)


def wait_for(what: str, check: Any, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    load_rate = float(sys.argv[2]) if len(sys.argv) > 2 else 100_000.0
    servers = bootstrap()
    prefix = f"lat{uuid.uuid4().hex[:6]}"
    run_id = f"victim-{uuid.uuid4().hex[:8]}"
    arrivals = Arrivals()
    hook = webhook(arrivals, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TRAINTRAIL_KAFKA_BOOTSTRAP": servers,
            "TRAINTRAIL_KAFKA_TOPIC_PREFIX": prefix,
            "TRAINTRAIL_COLLECTOR_GROUP_ID": f"{prefix}-collectors",
            "TRAINTRAIL_CLICKHOUSE_DSN": f"chdb://{home / 'store'}",
            "TRAINTRAIL_API_PORT": "0",
            "TRAINTRAIL_ALERTS_COOLDOWN_S": "0",
            "TRAINTRAIL_ALERTS_WEBHOOK_URL": f"http://127.0.0.1:{hook.server_address[1]}/hook",
            "TRAINTRAIL_AGENT_SOCKET": str(home / "agent.sock"),
            "TRAINTRAIL_SDK_SPOOL_DIR": str(home / "sdk-spool"),
            "TRAINTRAIL_SPOOL_DIR": str(home / "spool"),
            "TRAINTRAIL_AGENT_METRICS_PORT": "0",
            "TRAINTRAIL_LOG_FORMAT": "json",
        }
        ready = home / "collector.ready"
        collector = spawn(
            [sys.executable, "-m", "collector", "collector", "run", "--ready-file", str(ready)],
            env,
            home / "collector.log",
        )
        wait_for("the collector", ready.exists)
        agent = spawn([sys.executable, "-m", "agent", "run"], env, home / "agent.log")
        wait_for("the agent", (home / "agent.sock").exists)
        stop = threading.Event()
        threading.Thread(
            target=watch_topic, args=(servers, f"{prefix}.alerts", arrivals, run_id, stop),
            daemon=True,
        ).start()  # fmt: skip
        load = subprocess.Popen(
            [sys.executable, "-c", _LOAD.format(repo=str(REPO)), str(home / "agent.sock"),
             str(load_rate), str(seconds + 10)],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.environ["TRAINTRAIL_AGENT_SOCKET"] = str(home / "agent.sock")
        from agent.sdk import start_run

        logged: dict[int, float] = {}
        time.sleep(5)  # the load up to speed, the relay assigned
        with start_run("bench-latency", "victim", run_id=run_id) as run:
            run.on_alert(lambda a: arrivals.note("run", a, run_id))
            t0 = time.monotonic()
            step = 0
            while time.monotonic() - t0 < seconds:
                loss = (2.0 * math.exp(-step / 2000) + 0.3) * (1 + 0.05 * math.sin(step * 1.7))
                spike = step >= 300 and step % 100 == 0
                if spike:
                    loss *= 20
                    logged[step] = time.time()
                run.log({"loss": loss}, step=step)
                step += 1
                time.sleep(max(0.0, t0 + step * 0.01 - time.monotonic()))
            time.sleep(5)  # the last alerts in flight
        achieved = float(load.communicate(timeout=60)[0].strip() or 0)
        stop.set()
        for proc in (agent, collector):
            proc.terminate()
            proc.wait(60)
        hook.shutdown()
    print(f"\nbackground load {achieved:,.0f} points/s (asked {load_rate:,.0f}); "
          f"{len(logged)} spikes logged over {seconds:.0f} s")  # fmt: skip
    print(f"\n{'run.log of the spike -> firing alert':<40} {'n':>4} {'median':>8} {'p99':>8}"
          f" {'max':>8}  target p99")  # fmt: skip
    for channel, label in (("topic", "in the alerts topic"), ("webhook", "at the webhook"),
                           ("run", "back in the training process")):  # fmt: skip
        lat = sorted(arrivals.at[channel][s] - t for s, t in logged.items()
                     if s in arrivals.at[channel])  # fmt: skip
        if not lat:
            print(f"{label:<40} {0:>4}  (none arrived)")
            continue
        p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
        print(f"{label:<40} {len(lat):>4} {statistics.median(lat):>7.3f}s {p99:>7.3f}s "
              f"{lat[-1]:>7.3f}s  {'< 1 s' if channel != 'run' else ''}")  # fmt: skip


if __name__ == "__main__":
    main()
