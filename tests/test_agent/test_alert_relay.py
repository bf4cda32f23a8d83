"""Alerts back to the training process: the relay's bookkeeping, the socket
request, and the SDK's stop_on names (the whole path runs in test_e2e)."""

from __future__ import annotations

import json
import math

import pytest

from agent.alert_relay import AlertRelay
from agent.sdk.alerts import AlertWatch, stop_detectors
from agent.sources.sdk_socket import handle_line
from schemas import default_registry
from tests.samples import record


def _alert(run_id: str, detector: str = "nonfinite", state: str = "firing") -> dict[str, object]:
    rec = record("Alert", run_id)
    rec.update(run_id=run_id, detector=detector, state=state, value=math.nan, message="loss is nan")
    return rec


def test_relay_keeps_alerts_of_runs_that_asked() -> None:
    relay = AlertRelay("127.0.0.1:1", "p", default_registry(), "n1")  # never started
    relay.add(_alert("r1"))  # nobody asked yet: not kept
    assert relay.since("r1", 0) == []  # asking registers interest
    relay.add(_alert("r1"))
    relay.add(_alert("r2"))
    relay.add(_alert("r1", "spike", "resolved"))
    got = relay.since("r1", 0)
    assert [(a["detector"], a["state"]) for a in got] == [
        ("nonfinite", "firing"),
        ("spike", "resolved"),
    ]
    assert got[0]["value"] is None and got[0]["node"] and got[0]["event_id"]
    assert relay.since("r1", got[0]["seq"]) == got[1:]
    json.dumps(got, allow_nan=False)  # what the socket sends
    assert relay.stats() == {
        "enabled": True, "assigned": False, "runs_asking": 1, "relayed": 2, "alive": False
    }  # fmt: skip


def test_socket_answers_alert_requests() -> None:
    relay = AlertRelay("127.0.0.1:1", "p", default_registry(), "n1")
    ask = json.dumps({"v": 1, "alerts": {"run_id": "r1", "after": 0}}).encode()
    assert handle_line(None, ask, relay) == {"ok": True, "alerts": []}  # type: ignore[arg-type]
    relay.add(_alert("r1"))
    reply = handle_line(None, ask, relay)  # type: ignore[arg-type]
    assert reply["ok"] and [a["detector"] for a in reply["alerts"]] == ["nonfinite"]
    no_relay = handle_line(None, ask)  # type: ignore[arg-type]
    assert no_relay == {"ok": True, "alerts": [], "relay": False}
    bad = handle_line(None, b'{"v": 1, "alerts": {"run_id": 3}}', relay)  # type: ignore[arg-type]
    assert bad["ok"] is False and "run_id" in bad["error"]


def test_stop_on_names_and_the_stop_flag() -> None:
    assert stop_detectors(["nan", "Divergence", "xid"]) == {"nonfinite", "divergence", "xid"}
    with pytest.raises(ValueError, match="unknown detector 'nans'"):
        stop_detectors(["nans"])
    with pytest.raises(TypeError):
        stop_detectors([1])  # type: ignore[list-item]
    seen: list[dict[str, object]] = []
    watch = AlertWatch(stop_detectors(["nan"]), [seen.append, lambda a: 1 / 0])
    watch.handle({"detector": "spike", "state": "firing", "message": "jump"})
    assert not watch.should_stop
    watch.handle({"detector": "nonfinite", "state": "firing", "message": "loss is nan"})
    assert watch.should_stop and watch.stop_reason == "nonfinite: loss is nan"
    assert len(seen) == 2  # the failing callback did not stop the others
