"""SIGTERM and SIGINT: finish the open runs as "killed", then do what the signal would.

Installed by `start_run` in the main thread only, and only over the default
disposition: a handler the script set before (or SIG_IGN) is left alone and
is the script's business; one it sets later replaces ours.

The handler never waits. It runs in the main thread between two bytecodes,
wherever that thread was: inside `threading.Event.set`, a logging call, any
library holding a lock. Finishing a run needs the sender thread and the hash
worker, and either may need that very lock; a handler that waited for them
would hang until its timeout with nothing delivered (seen under CPU load: the
main thread interrupted inside `Event.set`, the hash worker's done-callback
waiting for the same Event). So the handler only hands the reason to the
"traintrail-kill" thread, started beforehand, through a `queue.SimpleQueue`
(whose `put` is safe in a signal handler), and goes on with the default
behaviour at once: KeyboardInterrupt for SIGINT (via the previous handler,
normally `signal.default_int_handler`), SystemExit(128 + 15) for SIGTERM.
Unwinding releases whatever the main thread held, `finally` blocks run, and
at interpreter exit `wait_for_kill` gives the finish at most KILL_TIMEOUT_S
(+1 s) before the process ends with status 143.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from agent.sdk import client as _client

__all__ = ["KILL_TIMEOUT_S", "install", "installed", "wait_for_kill"]

KILL_TIMEOUT_S = 5.0
_previous: dict[int, Any] = {}  # signal -> the handler ours replaced
_finisher: Callable[[str], None] | None = None
_reasons: queue.SimpleQueue[str] = queue.SimpleQueue()
_worker_pid = 0  # the process whose kill thread runs (a forked child has none)
_requested = 0  # kills handed to the kill thread (written by the handler only)
_completed = 0  # kills it has finished (written by the kill thread only)
_progress = threading.Condition()


def _after_fork_in_child() -> None:
    """A forked child has no kill thread and must not inherit the parent's pending
    kills or a lock the parent's kill thread held at the fork."""
    global _reasons, _requested, _completed, _progress
    _reasons, _requested, _completed = queue.SimpleQueue(), 0, 0
    _progress = threading.Condition()


os.register_at_fork(after_in_child=_after_fork_in_child)


def installed() -> frozenset[int]:
    """The signals whose handler is ours."""
    return frozenset(s for s in _previous if signal.getsignal(s) is _handler)


def install(finish_killed: Callable[[str], None]) -> None:
    """Handle SIGTERM and SIGINT with `finish_killed(reason)` where still at the default.

    Safe to call repeatedly and from any thread (does nothing outside the main one).
    """
    global _finisher, _worker_pid
    _finisher = finish_killed
    if threading.current_thread() is not threading.main_thread():
        return
    if _worker_pid != os.getpid():  # first run of this process (or of a forked child)
        threading.Thread(target=_kill_worker, name="traintrail-kill", daemon=True).start()
        _worker_pid = os.getpid()
    for signum, default in (
        (signal.SIGTERM, signal.SIG_DFL),
        (signal.SIGINT, signal.default_int_handler),
    ):
        if signum in _previous:
            continue
        try:
            if signal.getsignal(signum) is not default:
                continue  # the script's own handler, or SIG_IGN: theirs to decide
            _previous[signum] = signal.signal(signum, _handler)
        except (ValueError, OSError):  # not the main interpreter, or an odd platform
            continue


def wait_for_kill(timeout: float = KILL_TIMEOUT_S + 1.0) -> bool:
    """Wait (bounded) until every kill the handler requested is finished. For the
    atexit hook: there the main thread holds no lock the finish could need."""
    with _progress:
        return _progress.wait_for(lambda: _completed >= _requested, timeout)


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    if _client.in_critical_section():  # mid-way through moving the buffer: finish that
        _client.defer_signal(signum)  # raised again the moment it is consistent
        return
    if _finisher is not None and _worker_pid == os.getpid():
        _requested += 1
        _reasons.put(f"killed by {signal.Signals(signum).name}")
    previous = _previous.get(signum)
    if signum == signal.SIGINT:
        if callable(previous):
            previous(signum, frame)  # default_int_handler: raises KeyboardInterrupt
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _kill_worker() -> None:
    global _completed
    while True:
        reason = _reasons.get()
        finisher = _finisher
        try:
            if finisher is not None:
                finisher(reason)
        except Exception:  # never let a reporting problem change how the process ends
            import logging

            logging.getLogger(__name__).exception("traintrail: finishing runs on a signal failed")
        finally:
            with _progress:
                _completed += 1
                _progress.notify_all()
