"""The SDK's background sender: buffer in the training thread, ship from a daemon thread.

`Run.log` must cost about a microsecond and never wait on the agent, so it only
appends one tuple `(step, time_ns, {name: value})` to a deque (atomic under
the GIL: no lock) after one C-speed type check of the values
(`agent.sdk.values`). Everything else happens on a daemon thread: it takes
what was buffered, in order, has `agent.sdk.encode` turn it into batch lines
(values read there, never in the training thread) and hands the lines to
`agent.sdk.transport`, which sends them to the agent or spools them. The
thread wakes every 250 ms (FLUSH_INTERVAL_S), and sooner when entries pile up
or a flush asks.

Memory is bounded: beyond `max_points` buffered points the oldest metric
points are dropped (counted in `dropped_points`, one warning); lifecycle
events are never dropped. The bound is enforced by the sender and, when the
sender is stuck (agent hung, spool unwritable), by the training thread once
every `ABSORB_ENTRIES` log calls.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.sdk.encode import Body, Encoder, Entry, Event
from agent.sdk.transport import (
    DEFAULT_SOCKET,
    DEFAULT_SPOOL_DIR,
    Transport,
    default_socket_path,
    default_spool_dir,
)
from agent.sdk.values import PLAIN_TYPES, check_values
from agent.sdk.warn import WarnOnce

__all__ = [
    "DEFAULT_SOCKET",  # re-exported from agent.sdk.transport, where it moved
    "DEFAULT_SPOOL_DIR",  # likewise
    "PLAIN_TYPES",  # re-exported from agent.sdk.values, where it moved
    "WAKE_MASK",
    "Client",
    "check_values",  # re-exported from agent.sdk.values
    "default_socket_path",  # re-exported from agent.sdk.transport
    "default_spool_dir",  # likewise
    "defer_signal",
    "in_critical_section",
]

log = logging.getLogger(__name__)

# The sender's cycle. Its cost is per wake-up (timer, GIL hand-offs, one send and
# reply: 400-500 us of CPU a cycle on a 2-core VM, whatever it carries), so the
# interval sets what an open run takes from training; it also adds to alert
# latency (bench/alert_latency.py: p99 0.32 s to the alerts topic at 0.25 s).
FLUSH_INTERVAL_S = 0.25
ALERT_POLL_S = 0.25  # how often a run that watches its alerts asks the agent
WAKE_MASK = 1023  # the training thread nudges the sender every 1024 buffered log calls
ABSORB_ENTRIES = 8192  # ...and enforces the bound itself beyond this many
TAKE_POINTS = 50_000  # points the sender converts per cycle before delivering them

_held = 0  # training-thread sections holding a Client lock (see Client.pressure)
_deferred: list[int] = []  # signals that arrived in one, raised again at its end


def in_critical_section() -> bool:
    """True while a training thread holds a Client lock (signal handlers must wait)."""
    return _held > 0


def defer_signal(signum: int) -> None:
    """Raise `signum` again when the current critical section ends."""
    if signum not in _deferred:
        _deferred.append(signum)


class _Mark:
    """A flush/close mark: everything queued before it is done once it is taken and sent."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq


Item = Entry | Event | _Mark


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
        self.socket_path = socket_path or default_socket_path()
        self.spool_path = Path(spool_dir or default_spool_dir()) / f"{run_id}.{os.getpid()}.jsonl"
        self.max_points = max_points
        self._overflow = 0  # points dropped for the bound
        self._pid = os.getpid()
        self._warn = WarnOnce(log)
        self._encoder = Encoder(run_id, self.stream, self._warn)
        self.last = self._encoder.last  # last value of each metric, as sent
        self._transport = Transport(self.socket_path, self.spool_path, self._warn)
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
        self._closing = self._closed = False
        self._deadline = math.inf
        self._executor: ThreadPoolExecutor | None = None
        self._on_alert: Callable[[dict[str, Any]], None] | None = None
        self._alert_seq = 0  # the relay's number of the last alert seen
        self._alert_asked = 0.0
        self._thread = threading.Thread(target=self._loop, name="traintrail-sender", daemon=True)
        if start:
            self._thread.start()

    @property
    def dropped_points(self) -> int:
        """Metric points dropped: over the bound, or unreadable."""
        return self._overflow + self._encoder.dropped_points

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
            self.buf.append(Event(etype, future))
        else:
            self.buf.append(Event(etype, body))
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
        self._overflow += dropped
        msg = "traintrail: over %d metric points buffered; dropping the oldest"
        self._warn("overflow", msg, self.max_points)

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
            self._deadline = self._transport.deadline = time.monotonic() + timeout
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
                    self._transport.disconnect()
                    self._transport.last_fail = time.monotonic()
                    for _ in range(4):
                        if not self._cycle_safe(math.inf) and not self._outbox:
                            break
                    break
                if not progressed:
                    time.sleep(0.05)
        self._transport.disconnect()

    def _cycle_safe(self, budget: float = TAKE_POINTS) -> bool:
        with self._io_lock:
            try:
                return self._cycle(budget)
            except Exception:  # a bug here must kill neither the sender nor the run
                if "cycle" not in self._warn.seen:
                    self._warn.seen.add("cycle")
                    log.exception("traintrail: sender error (run %s)", self.run_id)
                return False

    def watch_alerts(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Ask the agent for this run's alerts every ALERT_POLL_S; each goes to `handler`."""
        self._on_alert = handler

    def _alerts(self) -> None:
        now = time.monotonic()
        if self._on_alert is None or now - self._alert_asked < ALERT_POLL_S:
            return
        self._alert_asked = now
        for alert in self._transport.ask_alerts(self.run_id, self._alert_seq) or ():
            self._alert_seq = max(self._alert_seq, int(alert.get("seq", 0)))
            self._on_alert(alert)

    def _cycle(self, budget: float) -> bool:
        self._alerts()
        progressed = False
        if not self._outbox:
            items, upto = self._take(budget)
            if items:
                self._outbox.extend(self._encoder.lines(items))
                progressed = True
            if upto > self._outbox_seq:
                self._outbox_seq = upto
                progressed = True
        if self._outbox or self._transport.spooling:
            before = len(self._outbox)
            self._transport.deliver(self._outbox)
            progressed = progressed or len(self._outbox) < before
        if not self._outbox and self._done < self._outbox_seq:
            with self._done_cv:
                self._done = self._outbox_seq
                self._done_cv.notify_all()
        return progressed

    def _take(self, budget: float) -> tuple[list[Entry | Event], int]:
        """Pop items in order (about `budget` points), stopping at an event whose body is
        still computing. Returns them and the last mark taken (0: none)."""
        items: list[Entry | Event] = []
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
                    isinstance(head, Event)
                    and isinstance(head.body, Future)
                    and not head.body.done()
                ):
                    break
                items.append(store.popleft())  # type: ignore[arg-type]
            self._stored -= points
        return items, upto
