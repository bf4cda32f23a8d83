"""The sender's batch encoding: the fast whole-batch path, the per-call wire
form and the call-by-call fallback all carry the same points."""

from __future__ import annotations

import base64
import json
import logging
import math
from typing import Any

import pytest

from agent.sdk.encode import Encoder, Entry
from agent.sdk.values import Later
from agent.sdk.warn import WarnOnce
from agent.sources.sdk_socket import decode_columns, unpack_columns
from tests.samples import unpacked_points

T0 = 1_700_000_000_000_000_000


def _encoder() -> Encoder:
    return Encoder("r1", "run/r1", WarnOnce(logging.getLogger("test")))


def _points(line: str) -> list[tuple[int, int, str, float]]:
    out = []
    for ev in json.loads(line)["events"]:
        if ev["type"] != "Metrics":
            continue
        out += unpacked_points(decode_columns(ev["body"]))
    return out


def _same(a: list[tuple[int, int, str, float]], b: list[tuple[int, int, str, float]]) -> bool:
    return len(a) == len(b) and all(
        x[:3] == y[:3] and (x[3] == y[3] or (math.isnan(x[3]) and math.isnan(y[3])))
        for x, y in zip(a, b, strict=True)
    )


def _expected(entries: list[Entry]) -> list[tuple[int, int, str, float]]:
    return [(s, t // 1000, k, float(v)) for s, t, m in entries for k, v in m.items()]


BATCHES: dict[str, list[Entry]] = {
    "uniform": [(i, T0 + i, {"loss": 1.0 / (i + 1), "acc": i / 7, "lr": 0.1}) for i in range(50)],
    "one call": [(3, T0, {"loss": 0.5})],
    "mixed names": [
        (0, T0, {"loss": 1.0}),
        (1, T0 + 1, {"acc": 0.5, "loss": 0.9}),
        (2, T0 + 2, {"loss": 0.8}),
        (3, T0 + 3, {}),
    ],
    "specials": [
        (i, T0 + i, {"loss": v, "flag": True, "n": 7}) for i, v in enumerate((math.nan, -math.inf))
    ],
}


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_fast_path_carries_what_the_call_by_call_path_carries(name: str) -> None:
    entries = BATCHES[name]
    fast, each = _encoder(), _encoder()
    fast_line = fast.lines(list(entries))[0]
    count = sum(len(m) for _, _, m in entries)
    _, text = each._metrics_event_each(list(entries), count)
    each_line = '{"v":1,"events":[' + text + "]}"
    assert _same(_points(fast_line), _expected(entries))
    assert _same(_points(each_line), _expected(entries))
    assert fast.last.keys() == each.last.keys()
    assert ('"points_per_call"' in fast_line) == (name in ("uniform", "one call", "specials"))


def test_numpy_and_tensor_like_values_are_read_on_the_fast_path() -> None:
    np = pytest.importorskip("numpy")

    class Tensor:
        def __init__(self, v: float) -> None:
            self.v = v

        def item(self) -> float:
            return self.v

    entries: list[Entry] = [
        (i, T0 + i, {"a": np.float32(0.5), "b": np.int64(i), "c": Later(Tensor(2.5))})
        for i in range(3)
    ]
    enc = _encoder()
    line = enc.lines(entries)[0]
    assert '"points_per_call"' in line
    assert [p[3] for p in _points(line)] == [0.5, 0.0, 2.5, 0.5, 1.0, 2.5, 0.5, 2.0, 2.5]
    assert enc.last == {"a": 0.5, "b": 2.0, "c": 2.5}


def test_names_remembered_from_one_batch_never_leak_into_the_next() -> None:
    """The encoder keeps the last uniform batch's names (JSON, indexes) for the
    next cycle: batches of other names, the same names in another order, and
    a bad name after a good batch each come out as logged."""
    enc = _encoder()
    batches: list[list[Entry]] = [
        [(i, T0 + i, {"loss": 1.0 + i, "acc": 0.5}) for i in range(3)],
        [(i, T0 + i, {"loss": 2.0 + i, "acc": 0.25}) for i in range(3, 5)],  # same names
        [(i, T0 + i, {"acc": 0.75, "loss": 3.0}) for i in range(5, 7)],  # other order
        [(7, T0 + 7, {"lr": 0.1})],
        [(8, T0 + 8, {"loss": 4.0, "": 1.0})],  # a bad name: dropped, the rest kept
        [(9, T0 + 9, {"loss": 5.0, "acc": 0.125})],
    ]
    for entries in batches:
        line = enc.lines(list(entries))[0]
        good = [(s, t, {k: v for k, v in m.items() if k}) for s, t, m in entries]
        assert _same(_points(line), _expected(good))
        body = json.loads(line)["events"][0]["body"]
        assert body["names"] == list(dict.fromkeys(k for _, _, m in good for k in m))
    assert enc.last == {"loss": 5.0, "acc": 0.125, "lr": 0.1}
    assert enc.dropped_points == 1


def test_unreadable_values_and_steps_fall_back_and_are_counted() -> None:
    class Broken:
        def __float__(self) -> float:
            raise RuntimeError("device lost")

    entries: list[Entry] = [
        (0, T0, {"loss": 1.0, "bad": Broken()}),
        (2**63, T0 + 1, {"loss": 2.0}),  # beyond int64
        (2, T0 + 2, {"loss": 3.0, "": 1.0}),  # an empty name
    ]
    enc = _encoder()
    line = enc.lines(entries)[0]
    assert [(p[0], p[2], p[3]) for p in _points(line)] == [(0, "loss", 1.0), (2, "loss", 3.0)]
    assert enc.dropped_points == 3


def _line_event(body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Metrics", "event_id": "e1", "body": body}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"points_per_call": 0}, "positive integer"),
        ({"time_call_le": base64.b64encode(b"\0" * 16).decode()}, "mismatched"),
        ({"value_le": base64.b64encode(b"\0" * 8).decode()}, "value bytes"),
        ({"name_idx_call_le": "###"}, "Error"),
    ],
)
def test_a_per_call_batch_that_does_not_fit_is_rejected_with_its_reason(
    change: dict[str, Any], reason: str
) -> None:
    entries: list[Entry] = [(i, T0 + i, {"loss": 1.0, "acc": 0.5}) for i in range(3)]
    event = json.loads(_encoder().lines(entries)[0])["events"][0]
    body = {**event["body"], **change}
    good, bad = unpack_columns([_line_event(body)])
    assert not good
    assert len(bad) == 1 and reason in bad[0]["error"]
