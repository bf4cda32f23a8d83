"""SIGTERM and SIGINT: finish the open runs as "killed", then do what the signal would.

Installed by `start_run` in the main thread only, and only over the default
disposition: a handler the script set before (or SIG_IGN) is left alone and
is the script's business; one it sets later replaces ours. On a signal the
open runs are finished with status "killed" on a helper thread, waited for at
most KILL_TIMEOUT_S (+1 s): the main thread may have been interrupted holding
a lock the finish needs, so it must never wait unbounded. Then the default
behaviour follows: KeyboardInterrupt for SIGINT (via the previous handler,
normally `signal.default_int_handler`), SystemExit(128 + 15) for SIGTERM, so
`finally` blocks and atexit handlers still run and the exit status is 143.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from agent.sdk import client as _client

__all__ = ["KILL_TIMEOUT_S", "install", "installed"]

KILL_TIMEOUT_S = 5.0
_previous: dict[int, Any] = {}  # signal -> the handler ours replaced
_finisher: Callable[[str], None] | None = None


def installed() -> frozenset[int]:
    """The signals whose handler is ours."""
    return frozenset(s for s in _previous if signal.getsignal(s) is _handler)


def install(finish_killed: Callable[[str], None]) -> None:
    """Handle SIGTERM and SIGINT with `finish_killed(reason)` where still at the default.

    Safe to call repeatedly and from any thread (does nothing outside the main one).
    """
    global _finisher
    _finisher = finish_killed
    if threading.current_thread() is not threading.main_thread():
        return
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


def _handler(signum: int, frame: FrameType | None) -> None:
    if _client.in_critical_section():  # the main thread holds a lock the finish needs
        _client.defer_signal(signum)  # raised again the moment it lets go
        return
    name = signal.Signals(signum).name
    finisher = _finisher
    if finisher is not None:
        helper = threading.Thread(
            target=_safe, args=(finisher, f"killed by {name}"), name="traintrail-kill", daemon=True
        )
        helper.start()
        helper.join(KILL_TIMEOUT_S + 1.0)
    previous = _previous.get(signum)
    if signum == signal.SIGINT:
        if callable(previous):
            previous(signum, frame)  # default_int_handler: raises KeyboardInterrupt
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _safe(finisher: Callable[[str], None], reason: str) -> None:
    try:
        finisher(reason)
    except Exception:  # never let a reporting problem change how the process ends
        import logging

        logging.getLogger(__name__).exception("traintrail: finishing runs on a signal failed")
