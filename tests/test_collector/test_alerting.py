"""Alerts end to end on the real broker and engine: the collector's watch, the
alerts topic and table, a local webhook receiver (shape, retries, down), and
a collector restarted mid-episode."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from collector import queries
from collector.alert_sinks import AlertSinks, Webhook, WebhookConfig, payload
from collector.alerting import Alerting
from collector.api import start_api
from collector.cli import cli
from collector.config import CollectorConfig
from collector.pipeline import Pipeline
from collector.store import Store
from collector.watch import AlertRules, Watcher
from schemas import default_registry
from tests.test_collector.kit import curve_messages, pipeline_for, produce, training_topic


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records bodies; `fail` answers 500
    to that many requests first."""

    def __init__(self, port: int = 0, fail: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                else:
                    receiver.bodies.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _wait(done: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not there in time"
        time.sleep(0.05)


def _loss(n: int, spikes: dict[int, int]) -> np.ndarray:
    rng = np.random.default_rng(1)
    loss = 2.0 * np.exp(-np.arange(n) / 500) + 0.3 + rng.normal(0, 0.02, n)
    for start, length in spikes.items():
        loss[start : start + length] *= 6
    return loss


def _alerting(
    config: CollectorConfig, store: Store, url: str, **webhook: Any
) -> tuple[Watcher, AlertSinks]:
    rules = AlertRules(cooldown_s=0)

    def history(run_id: str, before: int) -> Any:
        return queries.watch_history(store, run_id, before, 256)

    sinks = AlertSinks(
        default_registry(),
        config.kafka_topic_prefix,
        config.kafka_bootstrap,
        WebhookConfig(url, **webhook),
    )
    return Watcher(rules, history, clock=time.time), sinks


def _stored(store: Store, run_id: str) -> list[tuple[str, str, int]]:
    rows = queries.alerts(store, run_id=run_id, limit=1000)
    return sorted((r["detector"], r["state"], r["step"]) for r in rows)


def _pipeline(config: CollectorConfig, store: Store, url: str, **webhook: Any) -> Pipeline:
    watcher, sinks = _alerting(config, store, url, **webhook)
    return pipeline_for(config, store, alerting=Alerting(watcher, sinks))


def _run(pipeline: Pipeline, done: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "pipeline did not get there in time"
        pipeline.step()


def test_spike_reaches_topic_table_and_webhook(
    kafka_bootstrap: str, ch_store: Store, receiver: Receiver
) -> None:
    config, topic = training_topic(kafka_bootstrap)
    run_id = f"alert-{time.time_ns()}"
    messages = curve_messages(run_id, {"loss": _loss(1500, {1000: 3})})
    produce(kafka_bootstrap, topic, [(run_id.encode(), m) for m in messages])
    pipeline = _pipeline(config, ch_store, receiver.url)
    want = [("spike", "firing", 1000), ("spike", "resolved", 1003)]
    # The table fills only through the alerts topic, which the collector consumes too.
    _run(pipeline, lambda: _stored(ch_store, run_id) == want)
    _wait(lambda: len(receiver.bodies) == 2)
    assert [(b["detector"], b["state"], b["step"]) for b in receiver.bodies] == want
    # The curve's event times are years old, yet it arrived just now: no stall.
    assert all(b["detector"] == "spike" for b in receiver.bodies)
    first = receiver.bodies[0]
    assert (
        first["run_id"] == run_id and first["metric"] == "loss" and first["severity"] == "warning"
    )
    assert first["baseline"] < first["value"] and "jumped" in first["message"]
    ids = {r["event_id"] for r in queries.alerts(ch_store, run_id=run_id)}
    assert {b["event_id"] for b in receiver.bodies} == ids
    pipeline.flush()
    pipeline.alerting.close()  # type: ignore[union-attr]
    pipeline.consumer.close()
    # The commands, through the query API as against an embedded store.
    api = start_api(ch_store, "127.0.0.1", 0)
    try:
        env = {"TRAINTRAIL_API_URL": api.url, "TRAINTRAIL_ALERTS_COOLDOWN_S": "0"}
        listed = CliRunner().invoke(cli, ["alerts", "list", "--run", run_id, "--json"], env=env)
        assert listed.exit_code == 0, listed.output
        assert {a["event_id"] for a in _json(listed.output)} == ids
        preview = CliRunner().invoke(cli, ["alerts", "test", run_id, "--json"], env=env)
        assert preview.exit_code == 0, preview.output
        assert [(a["detector"], a["state"], a["step"]) for a in _json(preview.output)] == want
        human = CliRunner().invoke(cli, ["alerts", "test", run_id], env=env)
        assert "loss jumped" in human.output
        missing = CliRunner().invoke(cli, ["alerts", "test", "no-such-run"], env=env)
        assert missing.exit_code != 0 and "no metric points" in missing.output
    finally:
        api.stop()


def test_alert_leaves_before_the_batch_window_ends(
    kafka_bootstrap: str, ch_store: Store, receiver: Receiver
) -> None:
    """A batch may fill for batch_max_seconds, but what arrived is watched every
    poll_seconds: the spike's alert is at the webhook while that batch is still
    open (one 30 s consume would have held it for the whole window)."""
    config, topic = training_topic(
        kafka_bootstrap,
        collector_batch_max_seconds=30.0,
        collector_batch_max_messages=5000,
        collector_poll_seconds=0.05,
    )
    run_id = f"slice-{time.time_ns()}"
    messages = curve_messages(run_id, {"loss": _loss(1200, {1000: 2})})
    produce(kafka_bootstrap, topic, [(run_id.encode(), m) for m in messages])
    pipeline = _pipeline(config, ch_store, receiver.url)
    results: list[Any] = []
    stepping = threading.Thread(target=lambda: results.append(pipeline.step()))
    stepping.start()
    try:
        _wait(lambda: any(b["state"] == "firing" for b in receiver.bodies), timeout=25.0)
        assert stepping.is_alive(), "the batch window closed before the alert came"
        assert pipeline.totals.messages == 0  # nothing of this batch stored yet
    finally:
        pipeline.stop_event.set()  # ends the window early: the batch in hand is kept
        stepping.join(30)
    assert not stepping.is_alive()
    # this batch holds the curve and the alerts it raised (the collector reads that topic too)
    assert results[0].rows["metrics"] == 1200 and results[0].rows["alerts"] == 2
    assert pipeline.flush()
    assert receiver.bodies[0]["step"] == 1000 and receiver.bodies[0]["run_id"] == run_id
    pipeline.alerting.close()  # type: ignore[union-attr]
    pipeline.consumer.close()


def test_webhook_down_does_not_hold_ingestion(kafka_bootstrap: str, ch_store: Store) -> None:
    with socket.socket() as s:  # a port nobody listens on (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config, topic = training_topic(kafka_bootstrap)
    run_id = f"down-{time.time_ns()}"
    loss = _loss(1200, {900: 2})
    produce(
        kafka_bootstrap,
        topic,
        [(run_id.encode(), m) for m in curve_messages(run_id, {"loss": loss})],
    )
    pipeline = _pipeline(
        config, ch_store, f"http://127.0.0.1:{port}/hook", retry_first_s=0.1, retry_max_s=0.2
    )
    _run(pipeline, lambda: len(_stored(ch_store, run_id)) == 2)  # stored while the hook is down
    points = ch_store.query(
        "SELECT count() AS n FROM metrics FINAL WHERE run_id = {r:String}", {"r": run_id}
    )
    assert points[0]["n"] == 1200
    webhook = pipeline.alerting.sinks.webhook  # type: ignore[union-attr]
    assert webhook is not None and webhook.sent == 0
    _wait(lambda: webhook.failed_attempts >= 2)
    pipeline.metrics.watch_alert_sinks(pipeline.alerting.sinks)  # type: ignore[union-attr]
    scrape = pipeline.metrics.render().decode()
    failures = next(
        float(line.split()[-1])
        for line in scrape.splitlines()
        if line.startswith("traintrail_collector_webhook_failures ")
    )
    assert failures >= 2 and "traintrail_collector_webhook_sent 0.0" in scrape
    late = Receiver(port)  # it comes back: the queued alerts arrive, in order
    try:
        _wait(lambda: len(late.bodies) == 2)
        assert [b["state"] for b in late.bodies] == ["firing", "resolved"]
    finally:
        pipeline.flush()
        pipeline.alerting.close()  # type: ignore[union-attr]
        pipeline.consumer.close()
        late.close()


def test_webhook_retries_and_slack_payload() -> None:
    receiver = Receiver(fail=2)
    try:
        hook = Webhook(WebhookConfig(receiver.url, "slack", retry_first_s=0.05))
        alert = _sample_alert()
        hook.send(alert)
        _wait(lambda: hook.sent == 1)
        assert receiver.attempts == 3 and hook.failed_attempts == 2
        body = receiver.bodies[0]
        assert body == payload(alert, "slack")
        assert body["text"].startswith("[critical] nonfinite firing: loss is nan")
        facts = {f["title"]: f["value"] for f in body["attachments"][0]["fields"]}
        assert facts["run_id"] == "r1" and facts["step"] == "7" and facts["node"] == "n1"
        hook.close()
    finally:
        receiver.close()
    flat = payload(alert, "json")
    assert flat["event_id"] == alert["envelope"]["event_id"] and "envelope" not in flat
    inf = {**alert, "value": float("inf")}  # JSON has no Inf: null, the message says it
    assert payload(inf, "json")["value"] is None
    json.dumps(payload(inf, "slack"), allow_nan=False)
    with pytest.raises(ValueError, match="http"):
        WebhookConfig("file:///etc/passwd")


def _json(output: str) -> Any:
    """The command's JSON, past the API server's own log lines (same process here)."""
    return json.loads(output[output.index("\n[") + 1 :] if not output.startswith("[") else output)


def _sample_alert() -> dict[str, Any]:
    from collector.detectors import Finding
    from collector.watch import alert_event

    f = Finding("nonfinite", "firing", 7, float("nan"), float("nan"), "loss is nan at step 7")
    return alert_event("r1", "n1", "loss", f, 1_700_000_000_000_000)


def test_collector_restarted_mid_episode_neither_repeats_nor_misses(
    kafka_bootstrap: str, ch_store: Store, receiver: Receiver
) -> None:
    config, topic = training_topic(kafka_bootstrap)
    run_id = f"restart-{time.time_ns()}"
    messages = curve_messages(run_id, {"loss": _loss(3000, {1450: 150, 2200: 1})})
    produce(kafka_bootstrap, topic, [(run_id.encode(), m) for m in messages[:15]])
    first = _pipeline(config, ch_store, receiver.url)
    _run(first, lambda: ("spike", "firing", 1450) in _stored(ch_store, run_id))
    first.flush()  # what it consumed, its alert included, is stored and committed
    first.alerting.close()  # type: ignore[union-attr]
    first.consumer.close()
    produce(kafka_bootstrap, topic, [(run_id.encode(), m) for m in messages[15:]])
    second = _pipeline(config, ch_store, receiver.url)  # same group: resumes at the commit
    want = {("spike", "resolved", 1600), ("spike", "firing", 2200), ("spike", "resolved", 2201)}
    _run(second, lambda: want <= set(_stored(ch_store, run_id)), timeout=90)
    stored = [a for a in _stored(ch_store, run_id) if a[0] == "spike"]
    assert stored == sorted([("spike", "firing", 1450), *want])
    _wait(lambda: len([b for b in receiver.bodies if b["detector"] == "spike"]) == 4)
    second.flush()
    second.alerting.close()  # type: ignore[union-attr]
    second.consumer.close()
    posted = [(b["detector"], b["state"], b["step"]) for b in receiver.bodies]
    assert sorted(p for p in posted if p[0] == "spike") == stored  # each once
