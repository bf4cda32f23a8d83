"""Batch lines from buffered log calls and lifecycle events: the SDK's wire encoding.

The sender thread turns what the training thread buffered into the agent's
line protocol, `{"v":1,"events":[...]}` per line: ONE columnar Metrics event
(schema v2: point columns packed little-endian, base64 in the line; when
every call of the stretch logs the same names, step, time and name_idx travel
once per call and the agent's `expand_calls` repeats them per point)
per contiguous stretch of log calls (a lifecycle event such as a checkpoint
ends a stretch, so the stream keeps the order in which things happened), at
most MAX_POINTS_PER_EVENT points an event and a line. Converting values to
floats (a tensor-like's `.item()`) happens here, on the sender thread, and so
does tracking the last value of each metric for the run's summary.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
import time
import uuid
from array import array
from collections.abc import Sequence
from concurrent.futures import Future
from itertools import accumulate, chain, repeat
from operator import floordiv, mul
from typing import Any

from agent.sdk.warn import WarnOnce

__all__ = [
    "MAX_POINTS_PER_EVENT",
    "PACKED_FIELDS",
    "Body",
    "Encoder",
    "Entry",
    "Event",
    "expand_calls",
]

MAX_POINTS_PER_EVENT = 10_000
PACKED_FIELDS = (
    "step_le",
    "time_us_le",
    "name_idx_le",
    "value_le",
    "step_call_le",  # the per-call form (expand_calls)
    "time_call_le",
    "name_idx_call_le",
)
_INT64 = struct.Struct("<q")

Entry = tuple[int, int, dict[str, Any]]  # (step, time_ns, {name: value}) of one log call
Body = dict[str, Any]


class Event:
    """A lifecycle event, id and time fixed when queued; the body may still be computing."""

    __slots__ = ("body", "event_id", "time_us", "type")

    def __init__(self, etype: str, body: Body | Future[Body]) -> None:
        self.type, self.body = etype, body
        self.event_id = str(uuid.uuid4())
        self.time_us = time.time_ns() // 1000


class Encoder:
    """One run's encoder: keeps the last value of each metric and counts unreadable points."""

    def __init__(self, run_id: str, stream: str, warn: WarnOnce) -> None:
        self.run_id = run_id
        self.stream = stream
        self._run_id_json = json.dumps(run_id)
        # A Metrics event's envelope JSON but for its event_id, time and body:
        # the same for every one.
        text = _dumps(self._envelope("Metrics", "", 0, {}))
        self._metrics_head = text[: text.index('"event_id":')]
        self._metrics_tail = text[text.index('"stream":') : -len("{}}")]
        # The last uniform batch's names: (names, their JSON, base64 of their
        # indexes). A loop logs the same names every step, so each cycle
        # after the first checks one tuple equality instead of 20 names.
        self._shape: tuple[tuple[str, ...], str, str] | None = None
        self.last: dict[str, float] = {}  # last value of each metric, as sent
        self.dropped_points = 0  # values that could not be read
        self._warn = warn

    def lines(self, items: list[Entry | Event]) -> list[str]:
        """Events in order, grouped into lines of at most MAX_POINTS_PER_EVENT points."""
        events: list[tuple[int, str]] = []  # (points, the event's JSON text)
        stretch: list[Entry] = []
        for item in items:
            if type(item) is tuple:
                stretch.append(item)
                continue
            if stretch:
                events += self._metrics_events(stretch)
                stretch = []
            assert isinstance(item, Event)
            body = item.body
            if isinstance(body, Future):
                try:
                    body = body.result()
                except Exception as exc:  # body functions catch their own errors; be safe
                    self._warn.log.error(
                        "traintrail: %s event of run %s lost: %s", item.type, self.run_id, exc
                    )
                    continue
            if item.type == "RunFinished" and isinstance(body.get("summary"), dict):
                body = {**body, "summary": {**self.last, **body["summary"]}}
            envelope = self._envelope(item.type, item.event_id, item.time_us, body)
            events.append((0, _dumps(envelope)))
        if stretch:
            events += self._metrics_events(stretch)
        lines: list[str] = []
        batch: list[str] = []
        points = 0
        for n, event in events:
            if batch and points + n > MAX_POINTS_PER_EVENT:
                lines.append(_line(batch))
                batch, points = [], 0
            batch.append(event)
            points += n
        if batch:
            lines.append(_line(batch))
        return lines

    def _metrics_events(self, entries: list[Entry]) -> list[tuple[int, str]]:
        """Metrics events (JSON text, packed columns) for consecutive log calls,
        at most MAX_POINTS_PER_EVENT points each; a single larger call is split."""
        out: list[tuple[int, str]] = []
        pending: list[Entry] = []
        count = 0
        for entry in entries:
            n = len(entry[2])
            if n > MAX_POINTS_PER_EVENT:  # one huge call: split it
                items = list(entry[2].items())
                for i in range(0, n, MAX_POINTS_PER_EVENT):
                    part = dict(items[i : i + MAX_POINTS_PER_EVENT])
                    if pending:
                        out.append(self._metrics_event(pending, count))
                        pending, count = [], 0
                    out.append(self._metrics_event([(entry[0], entry[1], part)], len(part)))
                continue
            if count + n > MAX_POINTS_PER_EVENT and pending:
                out.append(self._metrics_event(pending, count))
                pending, count = [], 0
            pending.append(entry)
            count += n
        if pending:
            out.append(self._metrics_event(pending, count))
        return [(n, text) for n, text in out if n]

    def _metrics_event(self, entries: list[Entry], count: int) -> tuple[int, str]:
        """One Metrics event with its point columns packed (Metrics v2).

        The common case, every value a number and every step in range, is
        built from whole-batch C loops (map, chain, join), with no Python
        statement per log call: the sender's cost per logged step is most of
        what traintrail takes from a training loop. Anything unusual falls
        back to `_metrics_event_each`, which reads call by call and drops,
        counts and warns about what it cannot read.
        """
        dicts = [e[2] for e in entries]
        try:
            flat = list(chain.from_iterable(map(dict.values, dicts)))
            if not flat:
                return 0, ""
            # struct reads each value as a C double (float(), a tensor's .item())
            values = struct.pack(f"<{len(flat)}d", *flat)
            shapes = list(map(tuple, dicts))
            # The names of each call, distinct, in order. Usually one list: the
            # count compares by identity first, without hashing 20 names a call.
            uniform = shapes.count(shapes[0]) == len(shapes)
            if uniform:
                names_json, idx_b64 = self._uniform_names(shapes[0])
            else:
                index: dict[str, int] = {}
                packed_of = {shape: _name_ids(shape, index) for shape in dict.fromkeys(shapes)}
                names_json = _dumps(list(index))
            calls = len(entries)
            step_calls = struct.pack(f"<{calls}q", *[e[0] for e in entries])
            times_ns = [e[1] for e in entries]
            time_calls = struct.pack(f"<{calls}q", *map(floordiv, times_ns, repeat(1000)))
        except (TypeError, ValueError, OverflowError, RuntimeError, struct.error):
            return self._metrics_event_each(entries, count)
        counts = list(map(len, dicts))
        if uniform:  # per-call columns: the agent repeats them per point
            # the last call carries every name: its values are the latest
            self.last.update(zip(shapes[0], _doubles(values)[-counts[0] :], strict=True))
            columns = (
                f'"points_per_call":{counts[0]},"step_call_le":"{_b64(step_calls)}",'
                f'"time_call_le":"{_b64(time_calls)}","name_idx_call_le":"{idx_b64}"'
            )
        else:
            starts = [0, *accumulate(counts)]
            spans = list(zip(starts, shapes, strict=False))
            self._remember_last(spans, _doubles(values), len(index))
            steps = b"".join(map(mul, _int64s(step_calls), counts))
            times = b"".join(map(mul, _int64s(time_calls), counts))
            idx = b"".join(map(packed_of.__getitem__, shapes))
            columns = (
                f'"step_le":"{_b64(steps)}","time_us_le":"{_b64(times)}",'
                f'"name_idx_le":"{_b64(idx)}"'
            )
        return len(flat), self._metrics_text(entries, names_json, columns, values)

    def _uniform_names(self, shape: tuple[str, ...]) -> tuple[str, str]:
        """(names JSON, base64 of the packed name indexes) of a batch whose
        calls all log `shape`; raises TypeError for a bad name."""
        if self._shape is None or self._shape[0] != shape:
            index: dict[str, int] = {}
            packed = _name_ids(shape, index)
            self._shape = (shape, _dumps(list(index)), _b64(packed))
        return self._shape[1], self._shape[2]

    def _metrics_text(
        self, entries: list[Entry], names_json: str, columns: str, values: bytes
    ) -> str:
        """The Metrics event's JSON text; `columns` holds the step, time and
        name_idx fields, base64 like the values (all little-endian)."""
        # event_id is a UUID and time_us an int: neither needs JSON escaping
        return (
            f'{self._metrics_head}"event_id":"{uuid.uuid4()}","time_us":{entries[0][1] // 1000},'
            f'{self._metrics_tail}{{"run_id":{self._run_id_json},"names":{names_json},'
            f'{columns},"value_le":"{_b64(values)}"}}}}'
        )

    def _metrics_event_each(self, entries: list[Entry], count: int) -> tuple[int, str]:
        """One Metrics event, read call by call: the path for unusual input.

        Per log call the work is float() of its values and a few byte-string
        operations: a call's points share step and time (one packed int64
        repeated), and a call with the same names as an earlier one reuses its
        packed name_idx. The columns travel base64-encoded in the JSON line;
        the agent puts the bytes into the Avro message as they are.
        """
        index: dict[str, int] = {}
        shapes: dict[tuple[str, ...], bytes] = {}  # the names of a call -> its packed name_idx
        spans: list[tuple[int, list[str]]] = []  # per call: first point, its names
        steps: list[bytes] = []
        times: list[bytes] = []
        idx: list[bytes] = []
        values: list[float] = []  # one array("d", ...) at the end: C speed
        pack = _INT64.pack
        prev_names: list[str] | None = None  # most calls log the names of the call before
        prev_packed = b""
        for step, time_ns, metrics in entries:
            try:
                at = pack(step)
            except struct.error:  # beyond int64: no column can hold it
                self.dropped_points += len(metrics)
                self._warn("step-range", "traintrail: step %r out of int64 range, dropped", step)
                continue
            start = len(values)
            try:
                values += map(float, metrics.values())
                names = list(metrics)
                if names == prev_names:
                    packed = prev_packed
                else:
                    key = tuple(names)
                    packed = shapes.get(key)  # type: ignore[assignment]
                    if packed is None:
                        packed = shapes[key] = _name_ids(key, index)
                    prev_names, prev_packed = names, packed
            except (TypeError, ValueError, OverflowError, RuntimeError):
                del values[start:]
                names, vals = self._slow_points(metrics, index)
                values += vals
                packed = struct.pack(f"<{len(names)}i", *(index[k] for k in names))
                prev_names = None
            n = len(values) - start
            if not n:
                continue
            steps.append(at * n)
            times.append(pack(time_ns // 1000) * n)
            idx.append(packed)
            spans.append((start, names))
        self._remember_last(spans, values, len(index))
        if not values:
            return 0, ""
        column = array("d", values)
        if sys.byteorder != "little":
            column.byteswap()
        columns = (
            f'"step_le":"{_b64(b"".join(steps))}","time_us_le":"{_b64(b"".join(times))}",'
            f'"name_idx_le":"{_b64(b"".join(idx))}"'
        )
        text = self._metrics_text(entries, _dumps(list(index)), columns, column.tobytes())
        return len(values), text

    def _remember_last(
        self, spans: Sequence[tuple[int, Sequence[str]]], values: Sequence[float], names: int
    ) -> None:
        """The last value of each metric (for the run summary): walk back from the
        latest call until every name was seen, usually one call."""
        seen: dict[str, float] = {}
        for start, call in reversed(spans):
            for offset, name in enumerate(call):
                if name not in seen:
                    seen[name] = values[start + offset]
            if len(seen) == names:
                break
        self.last.update(seen)

    def _slow_points(
        self, metrics: dict[str, Any], index: dict[str, int]
    ) -> tuple[list[str], list[float]]:
        """Per value: add new names to `index`; a value that cannot be read is dropped
        (counted, one warning per metric name)."""
        names: list[str] = []
        vals: list[float] = []
        for name, value in metrics.items():
            try:
                if type(name) is not str or not name:
                    raise TypeError("metric names must be non-empty str")
                number = float(value)
            except Exception as exc:  # a tensor's .item() may raise anything
                self.dropped_points += 1
                self._warn(
                    f"value:{name!r}",
                    "traintrail: metric %r of run %s unreadable, point dropped: %s",
                    name,
                    self.run_id,
                    exc,
                )
                continue
            index.setdefault(name, len(index))
            names.append(name)
            vals.append(number)
        return names, vals

    def _envelope(self, etype: str, event_id: str, time_us: int, body: Body) -> Body:
        return {
            "type": etype,
            "event_id": event_id,
            "time_us": time_us,
            "stream": self.stream,
            "key": self.run_id,
            "body": body,
        }


_JSON = json.JSONEncoder(allow_nan=True, separators=(",", ":"))


def _dumps(obj: object) -> str:
    return _JSON.encode(obj)


def _name_ids(shape: tuple[str, ...], index: dict[str, int]) -> bytes:
    """The packed indexes of a call's names, adding new names to `index`;
    TypeError for a name that is not a non-empty str."""
    if not all(type(k) is str and k for k in shape):
        raise TypeError("metric names must be non-empty str")
    ids = [index.setdefault(k, len(index)) for k in shape]
    return struct.pack(f"<{len(ids)}i", *ids)


def _line(events: list[str]) -> str:
    """One batch line from events already encoded as JSON text."""
    return '{"v":1,"events":[' + ",".join(events) + "]}"


def expand_calls(body: dict[str, Any]) -> dict[str, Any]:
    """The agent's side of the per-call form: a batch whose log calls all have
    the same names carries its step, time and name_idx once per call
    (`points_per_call`, `step_call_le`, `time_call_le`, `name_idx_call_le`,
    decoded from base64); this returns the Metrics v2 body with the per-point
    columns. The SDK then base64-encodes 8 bytes a point instead of 28, and
    the repeating costs the agent, not the training process, a few strided
    copies. Raises ValueError when the columns do not fit together."""
    if "points_per_call" not in body:
        return body
    n = body["points_per_call"]
    steps, times = body["step_call_le"], body["time_call_le"]
    idx, values = body["name_idx_call_le"], body["value_le"]
    if type(n) is not int or n < 1:
        raise ValueError(f"points_per_call must be a positive integer, not {n!r}")
    calls = len(steps) // 8
    if len(steps) % 8 or len(times) != len(steps) or len(idx) != 4 * n:
        raise ValueError("per-call columns of mismatched lengths")
    if len(values) != 8 * n * calls:
        raise ValueError(f"{len(values)} value bytes for {calls} calls of {n} points")
    out = {k: v for k, v in body.items() if k not in _PER_CALL}
    out["step_le"] = _each_times(steps, n)
    out["time_us_le"] = _each_times(times, n)
    out["name_idx_le"] = idx * calls
    return out


_PER_CALL = ("points_per_call", "step_call_le", "time_call_le", "name_idx_call_le")


def _each_times(column: bytes, n: int) -> bytes:
    """Each 8-byte item of `column` repeated `n` times in place: a call's step
    for each of its points. n strided copies in C instead of a loop per call;
    bytes are only moved, so byte order does not matter."""
    calls = array("q", column)
    out = array("q", bytes(len(column) * n))
    for j in range(n):
        out[j::n] = calls
    return out.tobytes()


def _int64s(column: bytes) -> list[bytes]:
    """The 8-byte items of `column`."""
    return [column[i : i + 8] for i in range(0, len(column), 8)]


def _doubles(le: bytes) -> Sequence[float]:
    """Read little-endian float64s where they are (copied only on big-endian)."""
    if sys.byteorder == "little":
        return memoryview(le).cast("d")
    column = array("d", le)
    column.byteswap()
    return column


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
