"""Where alerts go: the alerts topic (Avro), a webhook, and the log.

The topic is the record: the collector consumes its own alerts topic like
the others, so the `alerts` table fills through the same exactly-once path,
and agents relay a run's alerts from it back to the training process. The
webhook runs on its own thread behind a bounded queue: a slow or dead
receiver delays nothing but itself. Each alert is retried with capped
exponential backoff until `give_up_s`; a full queue drops the newest with a
counter and a log line (the topic and table still have it).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas import Registry, SchemaError, encode
from schemas.alert_json import flat_alert
from schemas.topics import topic_for

__all__ = ["AlertSinks", "Webhook", "WebhookConfig", "payload"]

log = structlog.get_logger("traintrail.alerts")

_COLORS = {"critical": "#d00000", "warning": "#f2a900", "info": "#2eb67d"}


def payload(alert: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The webhook body of one alert: `json` (its fields) or `slack`."""
    if fmt != "slack":
        return flat_alert(alert)
    env = alert["envelope"]
    head = f"[{alert['severity']}] {alert['detector']} {alert['state']}"
    facts = [
        (name, alert[name])
        for name in ("run_id", "metric", "step", "value", "baseline")
        if alert[name] is not None  # an Inf value stays in the text: "inf"
    ]
    facts.append(("node", env["node"]))
    return {
        "text": f"{head}: {alert['message']}",
        "attachments": [
            {
                "color": _COLORS.get(alert["severity"], "#888888"),
                "fields": [{"title": k, "value": str(v), "short": True} for k, v in facts],
                "footer": f"traintrail alert {env['event_id']}",
            }
        ],
    }


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    fmt: str = "json"
    timeout_s: float = 5.0
    retry_first_s: float = 0.5
    retry_max_s: float = 60.0
    give_up_s: float = 900.0
    queue_size: int = 10_000

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"[alerts] webhook_url must be http(s)://, not {self.url!r}")
        if self.fmt not in ("json", "slack"):
            raise ValueError(f"[alerts] webhook_format must be json or slack, not {self.fmt!r}")


@dataclass
class Webhook:
    config: WebhookConfig
    sent: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    _queue: queue.Queue[dict[str, Any] | None] = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(self.config.queue_size)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.error(
                "webhook queue full: alert not posted", event_id=alert["envelope"]["event_id"]
            )

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued for up to `timeout`, then stop."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._queue.put(None)
        self._thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None or self._stop.is_set():
                return
            try:
                self._deliver(alert)
            except Exception:  # one bad alert must not end the webhook for the rest
                self.dropped += 1
                log.exception("webhook could not post an alert")

    def _deliver(self, alert: dict[str, Any]) -> None:
        body = json.dumps(payload(alert, self.config.fmt), allow_nan=False, default=str).encode()
        started, wait = time.monotonic(), self.config.retry_first_s
        while not self._stop.is_set():
            error = self._post(body)
            if error is None:
                self.sent += 1
                return
            self.failed_attempts += 1
            if time.monotonic() - started + wait > self.config.give_up_s:
                self.dropped += 1
                log.error("webhook gave up on alert", error=error, id=alert["envelope"]["event_id"])
                return
            log.warning("webhook failed; retrying", error=error, retry_in_s=wait)
            self._stop.wait(wait)
            wait = min(wait * 2, self.config.retry_max_s)

    def _post(self, body: bytes) -> str | None:
        request = urllib.request.Request(  # noqa: S310 (http(s) only: WebhookConfig)
            self.config.url,
            data=body,
            headers={"Content-Type": "application/json", "User-Agent": "traintrail"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"


class AlertSinks:
    """Alerts to the log, the alerts topic and (if configured) the webhook."""

    def __init__(
        self,
        registry: Registry,
        topic_prefix: str,
        bootstrap: str | None,
        webhook: WebhookConfig | None = None,
    ) -> None:
        self.registry = registry
        self.topic = topic_for(topic_prefix, "Alert")
        self.emitted = 0
        self.undelivered = 0
        self._producer = (
            Producer(
                {
                    "bootstrap.servers": bootstrap,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 0,
                }
            )
            if bootstrap
            else None
        )
        self.webhook = Webhook(webhook) if webhook is not None and webhook.url else None

    def emit(self, alerts: list[dict[str, Any]]) -> None:
        for alert in alerts:
            self.emitted += 1
            level = log.error if alert["severity"] == "critical" else log.warning
            if alert["state"] == "resolved":
                level = log.info
            level(
                "ALERT " + alert["message"],
                detector=alert["detector"],
                state=alert["state"],
                run_id=alert["run_id"],
                metric=alert["metric"],
                step=alert["step"],
                event_id=alert["envelope"]["event_id"],
            )
            if self._producer is not None:
                self._publish(alert)
            if self.webhook is not None:
                self.webhook.send(alert)
        if self._producer is not None:
            self._producer.poll(0)

    def _publish(self, alert: dict[str, Any]) -> None:
        """To the alerts topic; a full local queue (Kafka away for long) or an
        alert that does not encode is counted and logged, never raised into
        ingestion."""
        assert self._producer is not None
        key = (alert["run_id"] or alert["envelope"]["node"]).encode()
        try:
            value = encode(self.registry, "Alert", alert)
            self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
        except (BufferError, KafkaException, SchemaError) as exc:
            self.undelivered += 1
            log.error("alert not sent to its topic", error=str(exc))

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.undelivered += 1
            log.error("alert not delivered to its topic", error=str(err))

    def close(self, timeout: float = 5.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout)
        if self.webhook is not None:
            self.webhook.close(timeout)
