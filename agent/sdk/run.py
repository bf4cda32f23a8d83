"""The `Run` object a training script holds: what it logs becomes the run's events.

Each method checks its arguments in the caller's thread (a mistake raises at
once, see `agent.sdk.values`) and queues an event on the run's `Client`;
anything slow (hashing a checkpoint or dataset, probing the context) runs on
a worker thread. `start_run` (in `agent.sdk`) decides the run's id and rank
and creates it.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.sdk import exit_hooks
from agent.sdk.alerts import AlertWatch, stop_detectors
from agent.sdk.client import WAKE_MASK, Client
from agent.sdk.context import snapshot
from agent.sdk.hashing import hash_path
from agent.sdk.redact import REDACTED, looks_secret_key, redact_value
from agent.sdk.scheduler import Placement
from agent.sdk.values import MetricValue, floats, opt_str, step_number

__all__ = ["STATUSES", "Run"]

log = logging.getLogger("agent.sdk")  # the logger these messages had before the split

STATUSES = frozenset({"finished", "failed", "killed"})
_time_ns = time.time_ns  # one lookup less per log call


class Run:
    """One training run. Create it with `start_run`; finish it (or use `with`)."""

    def __init__(
        self,
        project: str,
        name: str,
        run_id: str,
        config: dict[str, str],
        socket_path: str | None = None,
        seeds: dict[str, int] | None = None,
        where: Placement | None = None,
        attached: bool = False,
        stop_on: Iterable[str] = (),
    ) -> None:
        where = where or Placement()
        self._alerts = AlertWatch(stop_detectors(stop_on))
        self.run_id = run_id
        self.rank = where.rank
        self.world_size = where.world_size
        self.attached = attached
        """True for the ranks other than 0 of a distributed job: they never finish the run."""
        self.project = project
        self.name = name
        self.status: str | None = None
        self._last: dict[str, float] = {}
        self._steps = itertools.count()
        self._resume: int | None = None  # the last explicit step, until a log without one
        self._step_lock = threading.Lock()
        self._finished = False
        self._finish_lock = threading.Lock()
        self._warned_late = False
        self._pid = os.getpid()
        try:
            cwd = str(Path.cwd())
        except OSError:  # the working directory was deleted
            cwd = ""
        stream = f"run/{run_id}/rank{where.rank}" if attached else f"run/{run_id}"
        self._client = Client(run_id, socket_path, stream=stream)
        # What log() touches, held here: each attribute hop through the client is a
        # cache miss when log() runs right after a step that flushed the caches.
        self._buf = self._client.buf
        self._plain = self._client.PLAIN
        start = functools.partial(
            snapshot,
            run_id=run_id,
            project=project,
            name=name,
            config=config,
            argv=list(sys.argv),
            cwd=cwd,
            pid=self._pid,
            seeds=seeds,
            rank=where.rank,
            world_size=where.world_size,
            attached=attached,
            scheduler=where.variables,
        )
        self._client.add_event("RunStarted", start)
        if self._alerts.wanted:
            self._client.watch_alerts(self._alerts.handle)

    def __repr__(self) -> str:
        rank = f", rank={self.rank}" if self.world_size > 1 else ""
        return f"Run(project={self.project!r}, name={self.name!r}, run_id={self.run_id!r}{rank})"

    def on_alert(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback(alert)` for each alert the collector raises on this run
        (relayed by the agent within about a second; on the SDK's thread)."""
        self._alerts.callbacks.append(callback)
        self._client.watch_alerts(self._alerts.handle)

    @property
    def should_stop(self) -> bool:
        """True once an alert named in `stop_on` fired: save a checkpoint and end."""
        return self._alerts.should_stop

    @property
    def stop_reason(self) -> str | None:
        return self._alerts.stop_reason

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """The alerts received so far (only while watched: on_alert or stop_on)."""
        return list(self._alerts.received)

    @property
    def dropped_points(self) -> int:
        """Metric points dropped because the buffer bound was hit (the agent too slow)."""
        return self._client.dropped_points

    def log(self, metrics: Mapping[str, MetricValue], step: int | None = None) -> None:
        """Record metric values at `step` (default: previous step + 1, from 0).

        Costs about a microsecond: a copy of `metrics` is type-checked and
        appended to a buffer; a background thread converts, batches and sends.
        NaN and Inf are valid values. Values must be numbers (TypeError/ValueError
        here otherwise); names must be non-empty str (a point with another name
        is dropped by the sender, counted and warned about). A tensor-like value
        (`.item()`: torch, cupy, jax) is not read here, so logging never syncs
        a device: the sender thread reads it within ~0.25 s, so do not change it
        in place after logging it (log `acc.clone()` for an accumulator).
        """
        if step is None:
            if self._resume is not None:
                self._resume_steps()
            step = next(self._steps)  # atomic: safe from several threads
        else:
            if type(step) is not int:
                step = step_number(step)
            self._resume = step
        if type(metrics) is dict:
            values = metrics.copy()  # the caller may reuse its dict for the next step
        elif isinstance(metrics, Mapping):
            values = dict(metrics)
        else:
            raise TypeError(f"metrics must be a mapping, not {type(metrics).__name__}")
        # one C-speed pass over the value types; anything but int/float/bool and numpy
        # scalars takes the slow path. Names are checked by the sender (a bad one is
        # dropped with a warning): checking them here would cost as much again.
        if not self._plain.issuperset(map(type, values.values())):
            values = self._client.check(values)
        if self._finished and self._late("log"):
            return
        buf = self._buf
        buf.append((step, _time_ns(), values))  # atomic under the GIL: no lock
        if not len(buf) & WAKE_MASK:
            self._client.pressure()

    def _resume_steps(self) -> None:
        """After an explicit step, the default step continues from it (once, under a
        lock: several threads may log without a step at the same moment)."""
        with self._step_lock:
            if self._resume is not None:
                self._steps = itertools.count(self._resume + 1)
                self._resume = None

    def log_checkpoint(
        self,
        path: str | os.PathLike[str],
        step: int | None = None,
        metrics: Mapping[str, MetricValue] | None = None,
    ) -> None:
        """Record a checkpoint file (or directory) with its size and SHA-256.

        The file must exist (FileNotFoundError otherwise); it is hashed on a
        worker thread right away, so do not overwrite it in the next instant.
        """
        full = Path(path).resolve()
        before = full.stat()
        step = None if step is None else step_number(step)
        values = floats("checkpoint metrics", metrics)
        if self._late("log_checkpoint"):
            return

        def body() -> dict[str, Any]:
            digest, size = _hash(full, before)
            return {
                "run_id": self.run_id,
                "path": str(full),
                "size_bytes": size,
                "sha256": digest,
                "step": step,
                "metrics": values,
            }

        self._client.add_event("CheckpointSaved", body)

    def log_dataset(
        self,
        name: str,
        version: str | None = None,
        uri: str | None = None,
        license: str | None = None,
        preprocessing: Sequence[str] = (),
        path: str | os.PathLike[str] | None = None,
        content_hash: str | None = None,
    ) -> None:
        """Record a dataset the run reads.

        With `path` and no `content_hash`, the hash is the SHA-256 of the file,
        or of a sorted `relpath<TAB>sha256<LF>` manifest for a directory.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("dataset name must be a non-empty str")
        if isinstance(preprocessing, str) or not all(isinstance(p, str) for p in preprocessing):
            raise TypeError("preprocessing must be a sequence of str")
        full = None if path is None else Path(path).resolve()
        body: dict[str, Any] = {
            "run_id": self.run_id,
            "name": name,
            "version": opt_str("version", version),
            "uri": opt_str("uri", uri),
            "content_hash": opt_str("content_hash", content_hash),
            "license": opt_str("license", license),
            "preprocessing": list(preprocessing),
            "path": None if full is None else str(full),
        }
        if full is None or content_hash is not None:
            if not self._late("log_dataset"):
                self._client.add_event("DatasetUsed", body)
            return
        before = full.stat()  # a wrong path is the caller's mistake: say so now
        if not self._late("log_dataset"):
            hashed = lambda: {**body, "content_hash": _hash(full, before)[0] or None}  # noqa: E731
            self._client.add_event("DatasetUsed", hashed)

    def log_eval(
        self,
        name: str,
        metrics: Mapping[str, MetricValue],
        dataset: str | None = None,
        step: int | None = None,
    ) -> None:
        """Record an evaluation: `metrics` measured on `dataset` (a name given to
        `log_dataset`, a content hash or a URI), e.g. the test-set scores a
        release decision rests on. Stored apart from the training curve."""
        if not isinstance(name, str) or not name:
            raise TypeError("evaluation name must be a non-empty str")
        values = floats("evaluation metrics", metrics)
        body = {
            "run_id": self.run_id,
            "name": name,
            "dataset": opt_str("dataset", dataset),
            "step": None if step is None else step_number(step),
            "metrics": values,
        }
        if not self._late("log_eval"):
            self._client.add_event("EvalLogged", body)

    def log_event(
        self, kind: str, attrs: Mapping[str, object] | None = None, step: int | None = None
    ) -> None:
        """Record something that happened to the run, in order with its other
        events: `kind` plus attributes kept as text (`str(value)`). Values
        that look secret (tokens, keys, credentials in URLs) are redacted here,
        in the process, as in the context snapshot."""
        if not isinstance(kind, str) or not kind:
            raise TypeError("event kind must be a non-empty str")
        if attrs is not None and not isinstance(attrs, Mapping):
            raise TypeError(f"attrs must be a mapping, not {type(attrs).__name__}")
        text: dict[str, str] = {}
        for key, value in (attrs or {}).items():
            if not isinstance(key, str) or not key:
                raise TypeError("attribute names must be non-empty str")
            text[key] = REDACTED if looks_secret_key(key) else redact_value(str(value))
        body = {
            "run_id": self.run_id,
            "kind": kind,
            "step": None if step is None else step_number(step),
            "attrs": text,
        }
        if not self._late("log_event"):
            self._client.add_event("RunEvent", body)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until everything logged so far is delivered or spooled (False on timeout)."""
        return self._client.flush(timeout)

    def finish(
        self,
        status: str = "finished",
        summary: Mapping[str, MetricValue] | None = None,
        error: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        """End the run: RunFinished, then deliver (or spool) everything within `timeout` s.

        `summary` defaults to the last value of each metric; given values
        override those. A second call does nothing. An attached rank (not rank
        0 of its job) sends no RunFinished: rank 0 owns the run's outcome; it
        only delivers what it logged.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, not {status!r}")
        values = floats("summary", summary)
        opt_str("error", error)
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        self.status = status
        exit_hooks.OPEN_RUNS.discard(self)
        try:
            body = {
                "run_id": self.run_id,
                "status": status,
                "summary": {**self._last, **values},
                "error": error,
            }
            if not self.attached:
                self._client.add_event("RunFinished", body)
            if not self._client.close(timeout):
                log.warning(
                    "traintrail: run %s not fully delivered within %g s", self.run_id, timeout
                )
        except Exception:
            log.exception("traintrail: finishing run %s failed", self.run_id)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self.finish()
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("killed", error=exit_hooks.describe(exc))
        else:
            self.finish("failed", error=exit_hooks.describe(exc))

    def _late(self, what: str) -> bool:
        """True (and one warning per run) when the run has finished: the call is ignored."""
        if self._finished and not self._warned_late:
            self._warned_late = True
            log.warning("traintrail: %s after run %s finished; ignored", what, self.run_id)
        return self._finished


def _hash(path: Path, before: os.stat_result) -> tuple[str, int]:
    """hash_path on the worker thread; ("", 0) and a warning when unreadable or changing."""
    try:
        digest, size = hash_path(path)
        after = path.stat()
    except OSError as exc:
        log.warning("traintrail: cannot hash %s: %s", path, exc)
        return "", 0
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        log.warning("traintrail: %s changed while being hashed; its hash may not match", path)
    return digest, size
