"""traintrail training SDK: what a training script imports to leave an audit trail.

    import agent.sdk as traintrail

    with traintrail.start_run(project="demo", config=args) as run:
        run.log_dataset("digits", version="1", path="data/")
        for step in range(n):
            run.log({"loss": loss, "lr": lr}, step=step)
        run.log_checkpoint("model.pt", step=step)

It lives inside someone else's training loop, so it follows three rules:
stdlib imports only (importing it pulls in nothing heavy); the loop never
waits on the agent (`log` appends to a buffer, a daemon thread ships, hashes
and context probes run off the training thread); and nothing it does raises
into the loop, except a programming error in the arguments (a non-numeric
metric, a missing checkpoint file), which raises TypeError/ValueError/OSError
at the call so the mistake is seen at once.

Distributed jobs (torchrun, Slurm, MPI, Kubernetes): every rank calls
`start_run` alike. The ranks derive one run id from the job identity their
launcher exported (see `agent.sdk.scheduler`), so they join one run without
talking: rank 0 owns it (RunStarted, RunFinished, stream `run/<id>`); every
other rank attaches (RunStarted with `attached` true and its own host, pid
and GPU context, never RunFinished, stream `run/<id>/rank<N>`).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import operator
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, SupportsFloat

from agent.sdk import signals as _signals
from agent.sdk.client import Client
from agent.sdk.context import flatten_config, hash_path, snapshot
from agent.sdk.scheduler import Placement, derive_run_id, placement

__all__ = ["MetricValue", "Run", "SupportsItem", "start_run"]

log = logging.getLogger(__name__)

STATUSES = frozenset({"finished", "failed", "killed"})
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SupportsItem(Protocol):
    """A one-element tensor/array or a numpy scalar: `.item()` returns a Python number."""

    def item(self) -> Any: ...


MetricValue = SupportsFloat | SupportsItem
"""int, float, bool, and numpy/torch scalar-likes (`.item()` or `__float__`)."""


def _to_float(name: str, value: object) -> float:
    """The float of a metric value; TypeError/ValueError name the metric."""
    if type(value) is int or type(value) is bool:
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"metric {name!r}: {value} does not fit a float") from None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes | bytearray):
        try:
            value = item()
        except (ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise ValueError(f"metric {name!r} must be a scalar: {exc}") from None
    if isinstance(value, str | bytes | bytearray):
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a number, not {type(value).__name__}") from None
    except OverflowError:
        raise ValueError(f"metric {name!r}: {value!r} does not fit a float") from None


def _floats(what: str, values: Mapping[str, MetricValue] | None) -> dict[str, float]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a mapping of name to number")
    out: dict[str, float] = {}
    for name, value in values.items():
        if type(name) is not str or not name:
            raise TypeError(f"{what} names must be non-empty str, got {name!r}")
        out[name] = value if type(value) is float else _to_float(name, value)
    return out


def _step(step: object) -> int:
    if type(step) is int:
        return step
    if isinstance(step, bool) or not hasattr(type(step), "__index__"):
        raise TypeError(f"step must be an int, not {type(step).__name__}")
    return operator.index(step)  # type: ignore[arg-type]


def _opt_str(what: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{what} must be a str or None, not {type(value).__name__}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    ) -> None:
        where = where or Placement()
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

    def __repr__(self) -> str:
        rank = f", rank={self.rank}" if self.world_size > 1 else ""
        return f"Run(project={self.project!r}, name={self.name!r}, run_id={self.run_id!r}{rank})"

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
        a device: the sender thread reads it within ~0.1 s, so do not change it
        in place after logging it (log `acc.clone()` for an accumulator).
        """
        if step is None:
            step = next(self._steps)  # atomic: safe from several threads
        else:
            if type(step) is not int:
                step = _step(step)
            self._steps = itertools.count(step + 1)
        if type(metrics) is dict:
            values = metrics.copy()  # the caller may reuse its dict for the next step
        elif isinstance(metrics, Mapping):
            values = dict(metrics)
        else:
            raise TypeError(f"metrics must be a mapping, not {type(metrics).__name__}")
        client = self._client
        # one C-speed pass over the value types; anything but int/float/bool and numpy
        # scalars takes the slow path. Names are checked by the sender (a bad one is
        # dropped with a warning): checking them here would cost as much again.
        if not client.PLAIN.issuperset(map(type, values.values())):
            values = client.check(values)
        if self._finished and self._late("log"):
            return
        buf = client.buf
        buf.append((step, time.time_ns(), values))  # atomic under the GIL: no lock
        if not len(buf) & client.WAKE_MASK:
            client.pressure()

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
        step = None if step is None else _step(step)
        values = _floats("checkpoint metrics", metrics)
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
            "version": _opt_str("version", version),
            "uri": _opt_str("uri", uri),
            "content_hash": _opt_str("content_hash", content_hash),
            "license": _opt_str("license", license),
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
        values = _floats("summary", summary)
        _opt_str("error", error)
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        self.status = status
        _OPEN_RUNS.discard(self)
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
            self.finish("killed", error=_describe(exc))
        else:
            self.finish("failed", error=_describe(exc))

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


def start_run(
    project: str,
    name: str | None = None,
    config: object = None,
    *,
    run_id: str | None = None,
    socket_path: str | None = None,
    seeds: Mapping[str, int] | None = None,
) -> Run:
    """Start recording a run; returns at once (context is collected in the background).

    Args:
        project: what the run belongs to.
        name: a label; default `<script>-<first 8 of run_id>`.
        config: hyperparameters: a Mapping, dataclass instance or argparse.Namespace
            (flattened to dotted keys, JSON values), or None.
        run_id: reuse an id; default: in a distributed job (world size > 1) an id
            derived from the job identity, so that every rank joins one run;
            otherwise a new UUID. With world size > 1 rank 0 owns the run and
            the other ranks attach to it, whether the id is given or derived.
        socket_path: the agent's socket; default $TRAINTRAIL_AGENT_SOCKET, else
            /tmp/traintrail/agent.sock.
        seeds: the random seeds the script set, by name (e.g. {"torch": 0,
            "numpy": 0, "data_shuffle": 1234}); signed 64-bit integers.
    """
    if not isinstance(project, str) or not project:
        raise TypeError("project must be a non-empty str")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    flat = flatten_config(config)
    declared = _seeds(seeds)
    where = placement()
    joined = where.distributed  # the ranks share this id: rank 0 owns it, the others attach
    if run_id is None:
        run_id, joined = _default_run_id(project, name, where)
    elif not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id must match {_RUN_ID.pattern}, got {run_id!r}")
    attached = joined and where.rank != 0
    if not name:
        name = f"{Path(sys.argv[0] if sys.argv else '').stem or 'python'}-{run_id[:8]}"
    run = Run(project, name, run_id, flat, socket_path, declared, where, attached)
    _install_hooks()
    _OPEN_RUNS.add(run)
    return run


_ordinals: dict[tuple[str, str], int] = {}
_ordinals_lock = threading.Lock()
_INT64 = range(-(2**63), 2**63)


def _seeds(seeds: object) -> dict[str, int]:
    if seeds is None:
        return {}
    if not isinstance(seeds, Mapping):
        raise TypeError("seeds must be a mapping of name to int")
    out: dict[str, int] = {}
    for key, value in seeds.items():
        if type(key) is not str or not key:
            raise TypeError(f"seed names must be non-empty str, got {key!r}")
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):
            raise TypeError(f"seed {key!r} must be an int, not {type(value).__name__}")
        number = operator.index(value)
        if number not in _INT64:
            raise ValueError(f"seed {key!r}: {number} does not fit a signed 64-bit integer")
        out[key] = number
    return out


def _default_run_id(project: str, name: str | None, where: Placement) -> tuple[str, bool]:
    """A job-derived id when distributed (the same in every rank), else a new UUID;
    and whether the id is shared by the job's ranks.

    Every rank makes the same sequence of start_run calls, so the N-th run of a
    project/name in this process is the N-th in every rank: N is part of the id,
    and a job that trains, then evaluates, records two runs.
    """
    if not where.distributed:
        return uuid.uuid4().hex, False
    if where.job_key is None:
        log.warning(
            "traintrail: rank %d of %d, but no job id in the environment "
            "(TORCHELASTIC_RUN_ID, SLURM_JOB_ID, PMIX_NAMESPACE, TRAINTRAIL_JOB_ID); this rank "
            "records its own run. Pass run_id= (the same in every rank) to join them.",
            where.rank,
            where.world_size,
        )
        return uuid.uuid4().hex, False
    key = (project, name or "")
    with _ordinals_lock:
        ordinal = _ordinals[key] = _ordinals.get(key, -1) + 1
    return derive_run_id(where.job_key, project, name or "", ordinal), True


# -- interpreter exit: finish what the script left open -----------------------------------

_OPEN_RUNS: set[Run] = set()
_uncaught: list[BaseException] = []
_hooks_installed = False
_previous_excepthook: Callable[..., Any] = sys.excepthook


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if not hasattr(sys, "ps1"):  # in a REPL an error does not end the process
        _uncaught.append(exc)  # the atexit handler then reports runs failed/killed
    _previous_excepthook(exc_type, exc, tb)


def _install_hooks() -> None:
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
    for run in list(_OPEN_RUNS):
        if run._pid == os.getpid():
            run.finish("killed", error=reason, timeout=_signals.KILL_TIMEOUT_S)


def _finish_open_runs() -> None:
    exc = _uncaught[-1] if _uncaught else None
    for run in list(_OPEN_RUNS):
        if run._pid != os.getpid():
            continue  # a forked child exiting: the run belongs to the parent
        if exc is None:
            run.finish("finished")
        elif isinstance(exc, KeyboardInterrupt):
            run.finish("killed", error=_describe(exc))
        else:
            run.finish("failed", error=_describe(exc))
