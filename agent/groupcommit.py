"""Group commit: the batches handed in while one is written go to the spool together.

Every way into the agent (the SDK socket's lines, the SDK spool import, the
hardware and access sources) hands its events here instead of calling
`Ingest.accept` itself. A waiting sender that finds no commit under way
commits on its own thread (no hand-over to another thread and back: one
SDK connection is as fast as before). What arrives while a commit is under
way is queued, and one thread, `ingest`, takes everything queued and makes
it durable as one batch: one pass of envelopes and seals, one write per
spool, one fsync, one wake-up of the shipper. Eight ranks' SDK lines that
arrive together share an fsync, and the GPU and host sources, which hand in
one message per tick, cost a message's share of a batch instead of a write,
a lock round and a wake-up each when a node floods the agent.

Two ways to hand events in:
- `accept` waits until the events are in the spool (or refused) and returns
  what `Ingest.accept` returns: for callers that acknowledge to someone (the
  SDK's reply, a log source saving its file position, an XID event retried
  until taken).
- `post` returns at once: for hardware samples, which nobody acknowledges
  and which a full samples spool drops by policy anyway. Posted events are
  bounded (`max_posted_events`): a poster that outruns the spool waits for
  room, so memory stays bounded and nothing is dropped here. Waiting
  callers need no bound (each holds one batch: as many as there are
  connections), and are never held back behind it, so concurrent SDK lines
  of any size still share a commit.

A batch that fails together (a full or failing critical spool) is taken
again one request at a time, so one sender's refusal is never another's.
Stop commits what is queued before the thread ends; a request handed in
after that is committed by its caller's own thread, never dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.ingest import Accepted, Ingest

__all__ = ["GroupCommit", "GroupCommitConfig", "OnDone"]

log = structlog.get_logger("traintrail.groupcommit")

# Called on the ingest thread with what became of posted events: (accepted,
# rejected) or the exception that refused them all.
OnDone = Callable[[Accepted | Exception], None]


@dataclass(frozen=True)
class GroupCommitConfig:
    # Posted events not yet taken beyond which `post` waits: bounds the memory
    # a flood of samples can hold. Small, because batches of a few dozen
    # messages already spread a commit's cost, and a short queue keeps the
    # shipper fed evenly (bench/agent_overhead.py: 64 vs 256 vs 1,024).
    max_posted_events: int = 64


@dataclass
class _Request:
    events: list[dict[str, Any]]
    allowed: frozenset[str] | None
    done: threading.Event | None = None  # set when `result` is there (accept)
    on_done: OnDone | None = None  # called with the result (post)
    result: Accepted | Exception | None = None


@dataclass
class GroupCommit:
    ingest: Ingest
    config: GroupCommitConfig = field(default_factory=GroupCommitConfig)
    batches: int = 0  # commits made (each of one or more requests)
    requests: int = 0  # requests committed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _queue: deque[_Request] = field(default_factory=deque, repr=False)
    _queued_events: int = 0
    _posted_events: int = 0  # of them, posted
    _closed: bool = True  # until started: requests are committed by their callers
    _busy: bool = False  # a commit is under way (on the ingest thread or a caller's)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._work = threading.Condition(self._lock)  # the ingest thread waits for requests
        self._room = threading.Condition(self._lock)  # callers wait for room in the queue

    def start(self) -> None:
        with self._lock:
            self._closed = False
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then end the thread."""
        with self._lock:
            self._closed = True
            self._work.notify()
            self._room.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("ingest thread did not finish its queue", timeout_s=timeout)

    @property
    def queued_events(self) -> int:
        return self._queued_events

    def accept(
        self, events: list[dict[str, Any]], allowed: frozenset[str] | None = None
    ) -> Accepted:
        """Spool `events` durably with whatever else is handed in meanwhile;
        return (accepted, rejected) or raise as `Ingest.accept` does."""
        with self._lock:
            alone = self._closed or not (self._busy or self._queue)
            if alone:
                self._busy = True
        if alone:  # nothing to group with: commit here, sparing two thread switches
            try:
                return self.ingest.accept(events, allowed)
            finally:
                self._done_committing()
        request = _Request(events, allowed, done=threading.Event())
        if self._put(request):
            request.done.wait()  # type: ignore[union-attr]
        else:  # stopped meanwhile
            request.result = self._commit_alone(request)
        result = request.result
        if isinstance(result, Exception):
            raise result
        assert result is not None
        return result

    def post(self, events: list[dict[str, Any]], on_done: OnDone | None = None) -> None:
        """Queue `events` for the spool and return; `on_done` hears the outcome."""
        request = _Request(events, None, on_done=on_done)
        if not self._put(request):
            self._finish(request, self._commit_alone(request))

    def _put(self, request: _Request) -> bool:
        """Queue `request`, a posted one once there is room (one larger than
        the bound when no other posted one waits); False once stopped (the
        caller commits it itself)."""
        n = len(request.events)
        posted = request.done is None
        with self._lock:
            while (
                posted
                and self._posted_events
                and self._posted_events + n > self.config.max_posted_events
                and not self._closed
            ):
                self._room.wait()
            if self._closed:
                return False
            self._queue.append(request)
            self._queued_events += n
            if posted:
                self._posted_events += n
            self._work.notify()
            return True

    def _done_committing(self) -> None:
        with self._lock:
            self._busy = False
            if self._queue or self._closed:  # else the ingest thread sleeps on: no wake-up
                self._work.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while (self._busy or not self._queue) and not (self._closed and not self._busy):
                    self._work.wait()
                if not self._queue:
                    return  # stopped, and everything queued is committed
                taken = list(self._queue)
                self._queue.clear()
                self._queued_events = self._posted_events = 0
                self._busy = True
                self._room.notify_all()
            try:
                results = self.ingest.accept_many([(r.events, r.allowed) for r in taken])
            except Exception as exc:  # a bug: tell every waiter rather than leave it hanging
                log.exception("ingest failed", requests=len(taken))
                results = [exc] * len(taken)
            self.batches += 1
            self.requests += len(taken)
            with self._lock:
                self._busy = False
            for request, result in zip(taken, results, strict=True):
                self._finish(request, result)

    def _commit_alone(self, request: _Request) -> Accepted | Exception:
        """Commit `request` on the caller's thread (after stop)."""
        (result,) = self.ingest.accept_many([(request.events, request.allowed)])
        return result

    @staticmethod
    def _finish(request: _Request, result: Accepted | Exception) -> None:
        request.result = result
        if request.done is not None:
            request.done.set()
        elif request.on_done is not None:
            try:
                request.on_done(result)
            except Exception:  # a source's counter must not stop the ingest thread
                log.exception("on_done callback failed")
        elif isinstance(result, Exception):
            log.error("posted events not spooled", events=len(request.events), error=str(result))
