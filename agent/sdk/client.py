"""The SDK's background sender: buffer in the training thread, ship from a daemon thread.

`Run.log` must cost microseconds and never wait on the agent, so it only
appends `(step, time_us, name, value)` tuples to a list under a lock. A daemon
thread wakes every 100 ms (sooner when 1000 points wait), turns the points
into ONE columnar Metrics event per contiguous stretch (a lifecycle event such
as a checkpoint ends a stretch, so the stream keeps the order in which things
happened), writes one batch line and sends it over the agent's unix socket,
then waits for the ack saying it is in the agent's spool. A line, once built,
is resent verbatim, so event ids survive retries and the agent deduplicates.

When the agent cannot be reached, lines go to `<spool_dir>/<run_id>.<pid>.jsonl`
(one warning says where); the thread retries every second and, once
connected, sends the spooled lines first, in order, then deletes the file. A
file left by a process that has exited is imported by the agent at its start.
Memory is bounded: beyond `max_points` buffered points the oldest metric
points are dropped (counted, one warning); lifecycle events are never dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_SPOOL_DIR",
    "Client",
    "default_socket_path",
    "default_spool_dir",
]

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/tmp/traintrail/agent.sock"  # noqa: S108 - the agent's documented default
DEFAULT_SPOOL_DIR = "/tmp/traintrail/sdk-spool"  # noqa: S108 - the agent imports from here
FLUSH_INTERVAL_S = 0.1
WAKE_POINTS = 1000
RETRY_S = 1.0
REPLY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
MAX_POINTS_PER_EVENT = 10_000
_PERMANENT = ("bad request", "line too long")  # agent refusals a resend cannot cure

Point = tuple[int, int, str, float]
Body = dict[str, Any]


def default_socket_path() -> str:
    """TRAINTRAIL_AGENT_SOCKET, else the agent's default."""
    return os.environ.get("TRAINTRAIL_AGENT_SOCKET") or DEFAULT_SOCKET


def default_spool_dir() -> str:
    """TRAINTRAIL_SDK_SPOOL_DIR, else the directory the agent imports at start."""
    return os.environ.get("TRAINTRAIL_SDK_SPOOL_DIR") or DEFAULT_SPOOL_DIR


class _Event:
    """A lifecycle event, id and time fixed when queued; the body may still be computing."""

    __slots__ = ("body", "event_id", "seq", "time_us", "type")

    def __init__(self, etype: str, body: Body | Future[Body], seq: int = 0) -> None:
        self.type, self.body, self.seq = etype, body, seq
        self.event_id = str(uuid.uuid4())
        self.time_us = time.time_ns() // 1000


class Client:
    """One run's buffer, sender thread and spool. Nothing here raises into training."""

    def __init__(
        self,
        run_id: str,
        socket_path: str | None = None,
        spool_dir: str | None = None,
        *,
        max_points: int = 1_000_000,
        start: bool = True,
    ) -> None:
        self.run_id = run_id
        self.socket_path = socket_path or default_socket_path()
        self.spool_path = Path(spool_dir or default_spool_dir()) / f"{run_id}.{os.getpid()}.jsonl"
        self.max_points = max_points
        self.dropped_points = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the buffer; held for microseconds
        self._io_lock = threading.Lock()  # one sender at a time
        self._done_cv = threading.Condition()
        self._wake = threading.Event()
        self._queue: deque[list[Point] | _Event] = deque()  # point lists end at an event
        self._seg: list[Point] = []  # points since the last event
        self._queued = 0  # points in the lists in _queue
        self._added = self._done = self._outbox_seq = 0  # queue-item sequence numbers
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

    def add_points(self, points: list[Point]) -> None:
        """Buffer metric points `(step, time_us, name, value)`."""
        with self._lock:
            seg = self._seg
            seg += points
            n = len(seg)
            if n + self._queued > self.max_points:
                self._drop_oldest(n + self._queued - self.max_points + self.max_points // 10)
        if n >= WAKE_POINTS > n - len(points):  # just crossed: wake the sender once
            self._wake.set()

    def add_event(self, etype: str, body: Body | Callable[[], Body]) -> None:
        """Queue a lifecycle event after every point so far; a callable body is computed
        on a worker thread (hashes, context probes) and the event waits for it in order."""
        if callable(body):
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="traintrail-hash")
                executor = self._executor
            try:
                future: Future[Body] = executor.submit(body)
            except RuntimeError:  # shut down already (interpreter exit): compute it here
                return self.add_event(etype, body())
            future.add_done_callback(lambda _f: self._wake.set())
            event = _Event(etype, future)
        else:
            event = _Event(etype, body)
        with self._lock:
            event.seq = self._seal()
            self._queue.append(event)
        return None

    def _seal(self) -> int:
        """(Lock held.) Queue the current points; returns a new sequence number."""
        if self._seg:
            self._queue.append(self._seg)
            self._queued += len(self._seg)
            self._seg = []
        self._added += 1
        return self._added

    def _drop_oldest(self, n: int) -> None:
        """Drop the `n` oldest buffered points (lock held); lifecycle events stay."""
        dropped = 0
        for pts in [i for i in self._queue if isinstance(i, list)] + [self._seg]:
            k = min(n - dropped, len(pts))
            del pts[:k]
            dropped += k
            if pts is not self._seg:
                self._queued -= k
            if dropped >= n:
                break
        self.dropped_points += dropped
        msg = "traintrail: over %d metric points buffered; dropping the oldest"
        self._warn_once("overflow", msg, self.max_points)

    # -- flush / close -----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is delivered or spooled. False on timeout."""
        if os.getpid() != self._pid:  # a forked child: the thread and socket are the parent's
            return False
        if self._closed:
            return self._done >= self._added
        with self._lock:
            target = self._seal()
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
            with self._lock:
                target = self._seal()
            self._deadline = time.monotonic() + timeout
            self._closing = True
            self._wake.set()
            if self._thread.is_alive():
                self._thread.join(timeout + 1.0)
            else:
                self._loop()
            return self._done >= target
        except Exception:
            log.exception("traintrail: closing the sender of run %s failed", self.run_id)
            return False

    # -- sender thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if not self._closing:
                self._wake.wait(FLUSH_INTERVAL_S)
                self._wake.clear()
            progressed = self._cycle_safe()
            if self._closing:
                with self._lock:  # every sequence number handed out is done, no new points
                    idle = not self._seg and self._done >= self._added
                if idle:
                    break
                if time.monotonic() >= self._deadline:  # out of time: spool what is left
                    self._disconnect()
                    self._last_fail = time.monotonic()
                    self._cycle_safe()
                    self._cycle_safe()
                    break
                if not progressed:
                    time.sleep(0.05)
        self._disconnect()

    def _cycle_safe(self) -> bool:
        with self._io_lock:
            try:
                return self._cycle()
            except Exception:  # a bug here must kill neither the sender nor the run
                if "cycle" not in self._warned:
                    self._warned.add("cycle")
                    log.exception("traintrail: sender error (run %s)", self.run_id)
                return False

    def _cycle(self) -> bool:
        progressed = False
        if not self._outbox:
            items, upto = self._take()
            self._outbox.extend(self._build_lines(items))
            self._outbox_seq = max(self._outbox_seq, upto)
            progressed = bool(items)
        if self._outbox or self._spooling:
            before = len(self._outbox)
            self._deliver()
            progressed = progressed or len(self._outbox) < before
        if not self._outbox and self._done < self._outbox_seq:
            with self._done_cv:
                self._done = self._outbox_seq
                self._done_cv.notify_all()
        return progressed

    def _take(self) -> tuple[list[list[Point] | _Event], int]:
        """Pop items in order, stopping at an event whose body is still computing.
        Returns them and the add-sequence number up to which everything is taken."""
        items: list[list[Point] | _Event] = []
        with self._lock:
            queue = self._queue
            while queue:
                head = queue[0]
                if (
                    isinstance(head, _Event)
                    and isinstance(head.body, Future)
                    and not head.body.done()
                ):
                    upto = head.seq - 1  # everything before the event still computing
                    break
                items.append(queue.popleft())
            else:
                upto = self._seal() if self._seg else self._added
                if queue:  # the points just sealed
                    items.append(queue.popleft())
            self._queued -= sum(len(i) for i in items if isinstance(i, list))
        return items, upto

    def _build_lines(self, items: list[list[Point] | _Event]) -> list[str]:
        """Events in order, grouped into lines of at most MAX_POINTS_PER_EVENT points."""
        merged: list[list[Point] | _Event] = []
        for item in items:  # points split only by a flush mark are one stretch
            if isinstance(item, list) and merged and isinstance(merged[-1], list):
                merged[-1] = merged[-1] + item
            else:
                merged.append(item)
        events: list[tuple[int, Body]] = []
        for item in merged:
            if isinstance(item, list):
                for i in range(0, len(item), MAX_POINTS_PER_EVENT):
                    chunk = item[i : i + MAX_POINTS_PER_EVENT]
                    events.append((len(chunk), self._metrics_event(chunk)))
                continue
            body = item.body
            if isinstance(body, Future):
                try:
                    body = body.result()
                except Exception as exc:  # body functions catch their own errors; be safe
                    log.error(
                        "traintrail: %s event of run %s lost: %s", item.type, self.run_id, exc
                    )
                    continue
            events.append((0, self._envelope(item.type, item.event_id, item.time_us, body)))
        lines: list[str] = []
        batch: list[Body] = []
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

    def _metrics_event(self, points: list[Point]) -> Body:
        steps, times, names, values = zip(*points, strict=True)
        index = {name: i for i, name in enumerate(dict.fromkeys(names))}
        body = {
            "run_id": self.run_id,
            "names": list(index),
            "step": list(steps),
            "time_us": list(times),
            "name_idx": [index[n] for n in names],
            "value": list(values),
        }
        return self._envelope("Metrics", str(uuid.uuid4()), points[0][1], body)

    def _envelope(self, etype: str, event_id: str, time_us: int, body: Body) -> Body:
        return {
            "type": etype,
            "event_id": event_id,
            "time_us": time_us,
            "stream": f"run/{self.run_id}",
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


def _line(events: list[Body]) -> str:
    return json.dumps({"v": 1, "events": events}, allow_nan=True, separators=(",", ":"))


def _mkdir_shared(path: Path) -> None:
    """Create the spool directory so that every local user's training can spool there."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(0o1777)  # shared like /tmp (sticky): each user owns their own files
