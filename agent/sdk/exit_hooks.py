"""Interpreter exit: finish the runs a training script left open, with the right status.

A script that ends (or crashes, or is killed) without finishing its run must
still leave a finished run behind. `start_run` registers each run in
`OPEN_RUNS` and installs the hooks once: SIGTERM/SIGINT finish every open run
as "killed" (`agent.sdk.signals`); an uncaught exception is remembered by
`sys.excepthook`, so the atexit handler finishes open runs as "failed" or
"killed"; otherwise they finish as "finished". Runs of a forked child's parent
are left to the parent. A signal's finish runs on its own thread from the
moment the signal arrives; the atexit handler waits for it (bounded) first.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agent.sdk import signals as _signals

if TYPE_CHECKING:
    from agent.sdk.run import Run

__all__ = ["OPEN_RUNS", "describe", "install_hooks"]


def describe(exc: BaseException) -> str:
    """The `error` text of a run ended by `exc`."""
    return f"{type(exc).__name__}: {exc}"


OPEN_RUNS: set[Run] = set()
_uncaught: list[BaseException] = []
_hooks_installed = False
_previous_excepthook: Callable[..., Any] = sys.excepthook


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if not hasattr(sys, "ps1"):  # in a REPL an error does not end the process
        _uncaught.append(exc)  # the atexit handler then reports runs failed/killed
    _previous_excepthook(exc_type, exc, tb)


def install_hooks() -> None:
    """Finish open runs on SIGTERM/SIGINT, an uncaught exception and interpreter exit."""
    global _hooks_installed, _previous_excepthook
    _signals.install(_kill_open_runs)  # SIGTERM/SIGINT; main thread only, so retried
    if _hooks_installed:
        return
    _hooks_installed = True
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(_finish_open_runs)


def _kill_open_runs(reason: str) -> None:
    """On SIGTERM/SIGINT (agent.sdk.signals): every open run of this process is killed."""
    for run in list(OPEN_RUNS):
        if run._pid == os.getpid():
            run.finish("killed", error=reason, timeout=_signals.KILL_TIMEOUT_S)


def _finish_open_runs() -> None:
    _signals.wait_for_kill()  # a SIGTERM/SIGINT's finish, started by its handler, ends first
    exc = _uncaught[-1] if _uncaught else None
    for run in list(OPEN_RUNS):
        if run._pid != os.getpid():
            continue  # a forked child exiting: the run belongs to the parent
        if exc is None:
            run.finish("finished")
        elif isinstance(exc, KeyboardInterrupt):
            run.finish("killed", error=describe(exc))
        else:
            run.finish("failed", error=describe(exc))
