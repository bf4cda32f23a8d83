"""Alerts raised on this run, relayed back by the agent: callbacks and stop_on.

The collector's detectors watch the run's metrics; the agent relays the
run's alerts to this process (agent/alert_relay.py) within about a second.
`stop_on` names the detectors whose firing should end training: the run's
`should_stop` turns true (with `stop_reason`), which a loop checks once a
step, and the Lightning and Transformers callbacks turn into the trainer's own
stop, so a diverged run can save a checkpoint and end instead of burning
GPU-hours. Nothing is raised into the training thread. Callbacks run on the
SDK's sender thread: keep them short; an exception in one is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STOP_NAMES", "AlertWatch", "stop_detectors"]

log = logging.getLogger("traintrail")

# Friendly names for stop_on; any detector name is accepted as well.
STOP_NAMES = {"nan": "nonfinite", "inf": "nonfinite", "nonfinite": "nonfinite"}
_DETECTORS = frozenset(
    {"nonfinite", "spike", "divergence", "lr_jump", "stall", "xid", "ecc_double_bit",
     "ecc_uncorrectable", "throttle", "gpu_idle"}
)  # fmt: skip

Alert = dict[str, Any]


def stop_detectors(names: Iterable[str]) -> frozenset[str]:
    """stop_on names → detector names; an unknown name is a TypeError now, not a
    silently ignored stop later."""
    out = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"stop_on entries must be str, not {type(name).__name__}")
        detector = STOP_NAMES.get(name.lower(), name.lower())
        if detector not in _DETECTORS:
            known = sorted(_DETECTORS | set(STOP_NAMES))
            raise ValueError(f"stop_on: unknown detector {name!r} (known: {', '.join(known)})")
        out.add(detector)
    return frozenset(out)


@dataclass
class AlertWatch:
    stop_on: frozenset[str] = frozenset()
    callbacks: list[Callable[[Alert], None]] = field(default_factory=list)
    received: list[Alert] = field(default_factory=list)
    stop_reason: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def wanted(self) -> bool:
        return bool(self.stop_on or self.callbacks)

    @property
    def should_stop(self) -> bool:
        return self._stop.is_set()

    def handle(self, alert: Alert) -> None:
        self.received.append(alert)
        if alert.get("state") == "firing" and alert.get("detector") in self.stop_on:
            if self.stop_reason is None:
                self.stop_reason = f"{alert.get('detector')}: {alert.get('message')}"
                log.warning("traintrail: stopping on alert: %s", self.stop_reason)
            self._stop.set()
        for callback in list(self.callbacks):
            try:
                callback(alert)
            except Exception:
                log.exception("traintrail: on_alert callback failed")
