"""The SDK's background sender: buffer in the training thread, ship from a daemon thread.

`Run.log` must cost about a microsecond and never wait on the agent, so it only
appends one tuple `(step, time_ns, {name: value})` to a deque (atomic under
the GIL: no lock) after one C-speed type check of the values. Everything else
happens on a daemon thread: converting values to floats (a tensor-like's
`.item()`, which may sync its device, runs there, never in the training
thread), tracking the last value of each metric, building ONE columnar
Metrics event per contiguous stretch (a lifecycle event such as a checkpoint
ends a stretch, so the stream keeps the order in which things happened),
encoding batch lines and sending them over the agent's unix socket, then
waiting for the ack saying a line is in the agent's spool. A line, once
built, is resent verbatim, so event ids survive retries and the agent
deduplicates. The thread wakes every 100 ms, and sooner when entries pile up.

When the agent cannot be reached, lines go to `<spool_dir>/<run_id>.<pid>.jsonl`
(one warning says where); the thread retries every second and, once
connected, sends the spooled lines first, in order, then deletes the file. A
file left by a process that has exited is imported by the agent at its start.
Memory is bounded: beyond `max_points` buffered points the oldest metric
points are dropped (counted in `dropped_points`, one warning); lifecycle
events are never dropped. The bound is enforced by the sender and, when the
sender is stuck (agent hung, spool unwritable), by the training thread once
every `ABSORB_ENTRIES` log calls.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_SPOOL_DIR",
    "PLAIN_TYPES",
    "WAKE_MASK",
    "Client",
    "check_values",
    "default_socket_path",
    "default_spool_dir",
    "defer_signal",
    "in_critical_section",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/tmp/traintrail/agent.sock"  # noqa: S108 - the agent's documented default
DEFAULT_SPOOL_DIR = "/tmp/traintrail/sdk-spool"  # noqa: S108 - the agent imports from here
FLUSH_INTERVAL_S = 0.1
WAKE_MASK = 1023  # the training thread nudges the sender every 1024 buffered log calls
ABSORB_ENTRIES = 8192  # ...and enforces the bound itself beyond this many
TAKE_POINTS = 50_000  # points the sender converts per cycle before delivering them
RETRY_S = 1.0
REPLY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
MAX_POINTS_PER_EVENT = 10_000
_PERMANENT = ("bad request", "line too long")  # agent refusals a resend cannot cure

PLAIN_TYPES: set[type] = {float, int, bool}
"""Value types `Run.log` buffers as they are (immutable; float() in the sender). numpy
scalar types (float64, float32, int64, bool_...) join on first sight."""

Entry = tuple[int, int, dict[str, Any]]  # (step, time_ns, {name: value}) of one log call
Point = tuple[int, int, str, float]  # (step, time_us, name, value): one point on the wire
Body = dict[str, Any]


_held = 0  # training-thread sections holding a Client lock (see Client.pressure)
_deferred: list[int] = []  # signals that arrived in one, raised again at its end


def in_critical_section() -> bool:
    """True while a training thread holds a Client lock (signal handlers must wait)."""
    return _held > 0


def defer_signal(signum: int) -> None:
    """Raise `signum` again when the current critical section ends."""
    if signum not in _deferred:
        _deferred.append(signum)


def default_socket_path() -> str:
    """TRAINTRAIL_AGENT_SOCKET, else the agent's default."""
    return os.environ.get("TRAINTRAIL_AGENT_SOCKET") or DEFAULT_SOCKET


def default_spool_dir() -> str:
    """TRAINTRAIL_SDK_SPOOL_DIR, else the directory the agent imports at start."""
    return os.environ.get("TRAINTRAIL_SDK_SPOOL_DIR") or DEFAULT_SPOOL_DIR


# -- values: checked in the training thread, converted in the sender ---------------------


class _Later:
    """A tensor-like value (`.item()`, e.g. a CUDA tensor) read by the sender thread.

    Its `.item()` may wait for the device; it runs in the sender, so the
    training thread never syncs for a metric. The value is read when the
    sender converts it (within ~0.1 s): a tensor modified in place after
    `log` (an accumulator) reports its later value; log a fresh one
    (`loss.detach()`, `acc.clone()`).
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __float__(self) -> float:
        value = self.obj.item()
        if isinstance(value, str | bytes | bytearray | complex):
            raise TypeError(f"item() returned {type(value).__name__}")
        return float(value)


def check_values(values: Mapping[Any, Any]) -> dict[str, Any]:
    """The slow path of `Run.log`: a copy of `values` ready to buffer, or TypeError/ValueError.

    Names must be non-empty str. Plain numbers stay; numpy values become
    floats now (cheap, no device; arrays are mutable); other tensor-likes
    (`.item()`) are checked to hold one element without reading it (`numel()`
    or `size`), detached from autograd (so no graph stays alive) and wrapped
    for the sender to read; anything else with `__float__`/`__index__`
    (Fraction, Decimal) is converted now.
    """
    out: dict[str, Any] = {}
    for name, value in values.items():
        if type(name) is not str or not name:
            raise TypeError(f"metric names must be non-empty str, got {name!r}")
        out[name] = value if type(value) in PLAIN_TYPES else _value(name, value)
    return out


def _value(name: str, value: Any) -> Any:
    if isinstance(value, str | bytes | bytearray):
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
    item = getattr(value, "item", None)
    if callable(item) and not type(value).__module__.startswith("numpy"):
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else getattr(value, "size", 1)
        if type(size) is int and size != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got {size} elements")
        if getattr(value, "requires_grad", False) is True:
            value = value.detach()
        return _Later(value)
    try:
        if callable(item):  # numpy scalar or array: CPU memory, read now
            kind = getattr(getattr(value, "dtype", None), "kind", None)
            scalar_type = type(value)
            try:
                value = item()
            except (ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"metric {name!r} must be a scalar: {exc}") from None
            if isinstance(value, str | bytes | bytearray):
                raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
            if kind in ("f", "i", "u", "b") and not hasattr(scalar_type, "__setitem__"):
                PLAIN_TYPES.add(scalar_type)  # immutable real scalar: the fast path from now
        return float(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ValueError) and "must be a scalar" in str(exc):
            raise
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"metric {name!r}: {value!r} does not fit a float") from None


class _Event:
    """A lifecycle event, id and time fixed when queued; the body may still be computing."""

    __slots__ = ("body", "event_id", "time_us", "type")

    def __init__(self, etype: str, body: Body | Future[Body]) -> None:
        self.type, self.body = etype, body
        self.event_id = str(uuid.uuid4())
        self.time_us = time.time_ns() // 1000


class _Mark:
    """A flush/close mark: everything queued before it is done once it is taken and sent."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


Item = Entry | _Event | _Mark


class Client:
    """One run's buffer, sender thread and spool. Nothing here raises into training."""

    PLAIN = PLAIN_TYPES  # for Run.log: attributes of the client it holds, no imports
    WAKE_MASK = WAKE_MASK
    check = staticmethod(check_values)

    def __init__(
        self,
        run_id: str,
        socket_path: str | None = None,
        spool_dir: str | None = None,
        *,
        max_points: int = 2_000_000,
        start: bool = True,
        stream: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.stream = stream or f"run/{run_id}"  # rank N of a job: run/<id>/rank<N>
        self._run_id_json = json.dumps(run_id)
        self.socket_path = socket_path or default_socket_path()
        self.spool_path = Path(spool_dir or default_spool_dir()) / f"{run_id}.{os.getpid()}.jsonl"
        self.max_points = max_points
        self.dropped_points = 0
        self.last: dict[str, float] = {}  # last value of each metric, as sent
        self._pid = os.getpid()
        # the training thread appends here, lock-free; the sender (and, when it falls
        # behind, the training thread) moves items to _store under _lock
        self.buf: deque[Item] = deque()
        self._store: deque[Item] = deque()  # bounded: _stored points at most max_points
        self._stored = 0
        self._lock = threading.Lock()  # _store; held for a move, never during I/O
        self._io_lock = threading.Lock()  # one sender at a time
        self._done_cv = threading.Condition()
        self._wake = threading.Event()
        self._marks = itertools.count(1)
        self._done = self._outbox_seq = self._target = 0  # mark sequence numbers
        self._outbox: deque[str] = deque()  # built lines, not yet acked or spooled
        self._sock: socket.socket | None = None
        self._rbuf = b""
        self._spooling = False  # the spool file holds lines to send before any new one
        self._spool_sent = 0  # lines of it already acked
        self._last_fail = -math.inf
        self._closing = self._closed = False
        self._deadline = math.inf
        self._warned: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._thread = threading.Thread(target=self._loop, name="traintrail-sender", daemon=True)
        if start:
            self._thread.start()

    # -- training-thread side: cheap, never blocks on I/O ------------------------------------

    def add(self, step: int, time_ns: int, values: dict[str, Any]) -> None:
        """Buffer one log call; `values` as `check_values` leaves them (the caller's copy)."""
        buf = self.buf
        buf.append((step, time_ns, values))
        if not len(buf) & WAKE_MASK:
            self.pressure()

    def pressure(self) -> None:
        """Called every 1024 buffered log calls: wake the sender; if it is stuck, bound memory.

        The training thread holds `_lock` here: a signal arriving meanwhile must
        not finish the run from inside (the sender would wait on that lock), so
        `agent.sdk.signals` defers it to the end of this section."""
        global _held
        if len(self.buf) >= ABSORB_ENTRIES:
            _held += 1
            try:
                with self._lock:
                    self._absorb()
            finally:
                _held -= 1
            if _deferred and not _held:
                signal.raise_signal(_deferred.pop())
        self._wake.set()

    def add_event(self, etype: str, body: Body | Callable[[], Body]) -> None:
        """Queue a lifecycle event after every point so far; a callable body is computed
        on a worker thread (hashes, context probes) and the event waits for it in order.
        A RunFinished body's `summary` is completed in order by the sender with the last
        value of each metric (the values given win)."""
        if callable(body):
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="traintrail-hash")
            try:
                future: Future[Body] = self._executor.submit(body)
            except RuntimeError:  # shut down already (interpreter exit): compute it here
                return self.add_event(etype, body())
            future.add_done_callback(lambda _f: self._wake.set())
            self.buf.append(_Event(etype, future))
        else:
            self.buf.append(_Event(etype, body))
        return None

    def _absorb(self) -> None:
        """(Lock held.) Move everything from `buf` to the bounded store."""
        buf, store = self.buf, self._store
        n = 0
        for _ in range(len(buf)):
            item = buf.popleft()
            store.append(item)
            if type(item) is tuple:
                n += len(item[2])
        self._stored += n
        if self._stored > self.max_points:
            self._drop_oldest(self._stored - self.max_points + self.max_points // 10)

    def _drop_oldest(self, n: int) -> None:
        """(Lock held.) Drop whole log calls, oldest first, until `n` points are gone;
        lifecycle events and marks stay, in order."""
        store, kept = self._store, deque[Item]()
        dropped = 0
        while store and dropped < n:
            item = store.popleft()
            if type(item) is tuple:
                dropped += len(item[2])
            else:
                kept.append(item)
        kept.extend(store)
        self._store = kept
        self._stored -= dropped
        self.dropped_points += dropped
        msg = "traintrail: over %d metric points buffered; dropping the oldest"
        self._warn_once("overflow", msg, self.max_points)

    # -- flush / close -----------------------------------------------------------------------

    def _mark(self) -> int:
        seq = next(self._marks)
        self.buf.append(_Mark(seq))
        return seq

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is delivered or spooled. False on timeout."""
        if os.getpid() != self._pid:  # a forked child: the thread and socket are the parent's
            return False
        if self._closed:
            return not self.buf and not self._store and not self._outbox
        target = self._mark()
        deadline = time.monotonic() + timeout
        while not self._thread.is_alive() and self._done < target:  # never started
            if time.monotonic() >= deadline:
                return False
            if not self._cycle_safe():
                time.sleep(0.05)
        self._wake.set()
        with self._done_cv:
            return self._done_cv.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Await pending hashes, then deliver or spool everything within `timeout`; stop."""
        if self._closed or os.getpid() != self._pid:
            return self._closed
        self._closed = True
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=True)  # local reads: they end
            self._target = self._mark()
            self._deadline = time.monotonic() + timeout
            self._closing = True
            self._wake.set()
            if self._thread.is_alive():
                self._thread.join(timeout + 1.0)
            else:
                self._loop()
            return self._done >= self._target
        except Exception:
            log.exception("traintrail: closing the sender of run %s failed", self.run_id)
            return False

    # -- sender thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        progressed = False
        while True:
            if not self._closing and not (progressed and self._store):
                self._wake.wait(FLUSH_INTERVAL_S)
                self._wake.clear()
            progressed = self._cycle_safe()
            if self._closing:
                if self._done >= self._target:
                    break
                if time.monotonic() >= self._deadline:  # out of time: spool what is left
                    self._disconnect()
                    self._last_fail = time.monotonic()
                    for _ in range(4):
                        if not self._cycle_safe(math.inf) and not self._outbox:
                            break
                    break
                if not progressed:
                    time.sleep(0.05)
        self._disconnect()

    def _cycle_safe(self, budget: float = TAKE_POINTS) -> bool:
        with self._io_lock:
            try:
                return self._cycle(budget)
            except Exception:  # a bug here must kill neither the sender nor the run
                if "cycle" not in self._warned:
                    self._warned.add("cycle")
                    log.exception("traintrail: sender error (run %s)", self.run_id)
                return False

    def _cycle(self, budget: float) -> bool:
        progressed = False
        if not self._outbox:
            items, upto = self._take(budget)
            if items:
                self._outbox.extend(self._build_lines(items))
                progressed = True
            if upto > self._outbox_seq:
                self._outbox_seq = upto
                progressed = True
        if self._outbox or self._spooling:
            before = len(self._outbox)
            self._deliver()
            progressed = progressed or len(self._outbox) < before
        if not self._outbox and self._done < self._outbox_seq:
            with self._done_cv:
                self._done = self._outbox_seq
                self._done_cv.notify_all()
        return progressed

    def _take(self, budget: float) -> tuple[list[Entry | _Event], int]:
        """Pop items in order (about `budget` points), stopping at an event whose body is
        still computing. Returns them and the last mark taken (0: none)."""
        items: list[Entry | _Event] = []
        upto = points = 0
        with self._lock:
            self._absorb()
            store = self._store
            while store and points < budget:
                head = store[0]
                if type(head) is tuple:
                    points += len(head[2])
                elif type(head) is _Mark:
                    upto = head.seq
                    store.popleft()
                    continue
                elif (
                    isinstance(head, _Event)
                    and isinstance(head.body, Future)
                    and not head.body.done()
                ):
                    break
                items.append(store.popleft())  # type: ignore[arg-type]
            self._stored -= points
        return items, upto

    def _build_lines(self, items: list[Entry | _Event]) -> list[str]:
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
            assert isinstance(item, _Event)
            body = item.body
            if isinstance(body, Future):
                try:
                    body = body.result()
                except Exception as exc:  # body functions catch their own errors; be safe
                    log.error(
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
        """Columnar Metrics events (JSON text) for consecutive log calls.

        The encoding is written out here rather than by json.dumps: a log call's
        points share their step and time, so those columns are one repeated
        string per call, and a call with the same names as an earlier one
        reuses its name_idx text. What is left per point is float() and repr().
        """
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
        index: dict[str, int] = {}
        shapes: dict[tuple[str, ...], str] = {}  # the names of a call -> its name_idx text
        finals: dict[tuple[str, ...], list[float]] = {}  # the last values per shape
        steps: list[str] = []
        times: list[str] = []
        idx: list[str] = []
        values: list[float] = []
        for step, time_ns, metrics in entries:
            names = tuple(metrics)
            try:
                vals = list(map(float, metrics.values()))
                text = shapes.get(names)
                if text is None:
                    if not all(type(k) is str and k for k in names):
                        raise TypeError("metric names must be non-empty str")
                    text = "".join(f"{index.setdefault(k, len(index))}," for k in names)
                    shapes[names] = text
            except (TypeError, ValueError, OverflowError, RuntimeError):
                good, vals = self._slow_points(metrics, index)
                names = tuple(good)
                text = "".join(f"{index[k]}," for k in names)
            n = len(vals)
            if not n:
                continue
            steps.append(f"{step}," * n)
            times.append(f"{time_ns // 1000}," * n)
            idx.append(text)
            values += vals
            finals.pop(names, None)
            finals[names] = vals
        for names, vals in finals.items():  # in order of their last call: later ones win
            self.last.update(zip(names, vals, strict=True))
        if not values:
            return 0, ""
        numbers = ",".join(map(float.__repr__, values))
        if "n" in numbers:  # nan, inf: JSON's NaN, Infinity, -Infinity (as json.dumps)
            numbers = ",".join(map(_json_float, values))
        body = (
            f'{{"run_id":{self._run_id_json},"names":{_dumps(list(index))},'
            f'"step":[{"".join(steps)[:-1]}],"time_us":[{"".join(times)[:-1]}],'
            f'"name_idx":[{"".join(idx)[:-1]}],"value":[{numbers}]}}'
        )
        head = self._envelope("Metrics", str(uuid.uuid4()), entries[0][1] // 1000, {})
        envelope = _dumps(head)
        assert envelope.endswith('"body":{}}')
        return len(values), envelope[: -len("{}}")] + body + "}"

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
                self._warn_once(
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

    # -- delivery ----------------------------------------------------------------------------

    def _deliver(self) -> None:
        if self._sock is None and time.monotonic() - self._last_fail >= RETRY_S:
            self._connect()
        if self._sock is not None and self._spooling:
            self._send_spool()
        while self._sock is not None and not self._spooling and self._outbox:
            if self._send_line(self._outbox[0]) is None:
                break
            self._outbox.popleft()
        if self._outbox:
            self._spool_outbox()

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            self._last_fail = time.monotonic()
            return False
        self._sock, self._rbuf = sock, b""
        return True

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send_line(self, line: str) -> bool | None:
        """Send a line, await its ack; on a broken connection reconnect and resend once.
        True: delivered; False: refused for good (warned); None: not delivered, keep it."""
        for _attempt in range(2):
            if self._sock is None and not self._connect():
                return None
            reply = self._exchange(line)
            if reply is None:
                self._disconnect()
                continue
            if reply.get("ok") is True:
                for rej in reply.get("rejected") or ():
                    error = rej.get("error") if isinstance(rej, dict) else rej
                    self._warn_once(
                        f"rejected:{error}", "traintrail: agent rejected an event: %s", error
                    )
                return True
            error = str(reply.get("error", reply))
            permanent = error.startswith(_PERMANENT)
            what = "dropped" if permanent else "will retry"
            self._warn_once(
                f"refused:{error}", "traintrail: agent refused a batch (%s): %s", what, error
            )
            if permanent:
                return False
            self._disconnect()
            self._last_fail = time.monotonic()
            return None
        return None

    def _exchange(self, line: str) -> Body | None:
        """One request/reply; None when the connection broke or no reply came in time."""
        sock = self._sock
        assert sock is not None
        wait = min(REPLY_TIMEOUT_S, max(0.05, self._deadline - time.monotonic()))
        end = time.monotonic() + wait
        try:
            sock.settimeout(wait)
            sock.sendall(line.encode() + b"\n")
            while b"\n" not in self._rbuf:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                self._rbuf += chunk
            raw, _, self._rbuf = self._rbuf.partition(b"\n")
            reply = json.loads(raw)
        except (OSError, ValueError):  # socket errors and timeouts; a garbled reply
            return None
        return reply if isinstance(reply, dict) else None

    def _send_spool(self) -> None:
        """Send spooled lines not yet acked, in order; delete the file when all are."""
        sent = 0
        try:
            with self.spool_path.open("rb") as f:
                for number, raw in enumerate(f):
                    if number < self._spool_sent or not raw.strip():
                        continue
                    if self._send_line(raw.decode().rstrip("\n")) is None:
                        return
                    self._spool_sent = number + 1
                    sent += 1
            self.spool_path.unlink()
        except FileNotFoundError:
            pass  # the agent imported it (it thought us dead): nothing left to send
        except OSError as exc:
            self._warn_once(
                "spool-read", "traintrail: cannot read spool %s: %s", self.spool_path, exc
            )
            return
        self._spooling, self._spool_sent = False, 0
        log.info("traintrail: agent reachable again; sent %d spooled batches", sent)

    def _spool_outbox(self) -> None:
        data = "".join(line + "\n" for line in self._outbox).encode()
        try:
            _mkdir_shared(self.spool_path.parent)
            fd = os.open(self.spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # never leave half a line for a reader
                raise
            finally:
                os.close(fd)
        except OSError as exc:
            msg = "traintrail: agent unreachable and spool %s unwritable (%s); holding in memory"
            self._warn_once("spool-write", msg, self.spool_path, exc)
            return
        if not self._spooling:
            self._spooling = True
            msg = "traintrail: agent unreachable at %s; spooling to %s, retrying every %g s"
            self._warn_once("spooling", msg, self.socket_path, self.spool_path, RETRY_S)
        self._outbox.clear()

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key in self._warned or len(self._warned) > 100:
            return
        self._warned.add(key)
        log.warning(msg, *args)


def _dumps(obj: object) -> str:
    return json.dumps(obj, allow_nan=True, separators=(",", ":"))


def _line(events: list[str]) -> str:
    """One batch line from events already encoded as JSON text."""
    return '{"v":1,"events":[' + ",".join(events) + "]}"


def _json_float(x: float) -> str:
    return _dumps(x)


def _mkdir_shared(path: Path) -> None:
    """Create the spool directory so that every local user's training can spool there."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(0o1777)  # shared like /tmp (sticky): each user owns their own files
