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

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from agent.sdk import exit_hooks
from agent.sdk.context import flatten_config
from agent.sdk.run import Run
from agent.sdk.scheduler import default_run_id, placement
from agent.sdk.values import MetricValue, SupportsItem
from agent.sdk.values import seeds as checked_seeds

__all__ = ["MetricValue", "Run", "SupportsItem", "start_run"]

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def start_run(
    project: str,
    name: str | None = None,
    config: object = None,
    *,
    run_id: str | None = None,
    socket_path: str | None = None,
    seeds: Mapping[str, int] | None = None,
    stop_on: Iterable[str] = (),
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
        stop_on: detectors whose alert on this run sets `run.should_stop`, e.g.
            ("nan", "divergence"); the Lightning and Transformers callbacks then
            stop the trainer. Any collector detector name is accepted.
    """
    if not isinstance(project, str) or not project:
        raise TypeError("project must be a non-empty str")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, not {type(name).__name__}")
    flat = flatten_config(config)
    declared = checked_seeds(seeds)
    where = placement()
    joined = where.distributed  # the ranks share this id: rank 0 owns it, the others attach
    if run_id is None:
        run_id, joined = default_run_id(project, name, where)
    elif not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id must match {_RUN_ID.pattern}, got {run_id!r}")
    attached = joined and where.rank != 0
    if not name:
        name = f"{Path(sys.argv[0] if sys.argv else '').stem or 'python'}-{run_id[:8]}"
    run = Run(project, name, run_id, flat, socket_path, declared, where, attached, stop_on)
    exit_hooks.install_hooks()
    exit_hooks.OPEN_RUNS.add(run)
    return run
