"""Which job and rank this process is: Slurm, torchrun, MPI and Kubernetes variables.

The ranks of one distributed job must land in one run without talking to
each other, so each rank derives the run id from what its launcher put in
the environment (the same in every rank) and its own rank from the rank
variables. Rank 0 owns the run; every other rank attaches to it.

Job identity, first found wins:

1. `TRAINTRAIL_JOB_ID` (set it yourself, e.g. from the Kubernetes downward
   API's Job controller uid);
2. `TORCHELASTIC_RUN_ID` (torchrun `--rdzv-id`; `none`, torchrun's default
   without rendezvous, does not count) with `TORCHELASTIC_RESTART_COUNT`;
3. Slurm: `SLURM_CLUSTER_NAME`, `SLURM_JOB_ID`, `SLURM_ARRAY_JOB_ID` +
   `SLURM_ARRAY_TASK_ID`, `SLURM_STEP_ID`, `SLURM_RESTART_COUNT`;
4. MPI: `PMIX_NAMESPACE` or Open MPI's job id;
5. Kubernetes: `JOB_UID`, else `JOB_NAME` with `POD_NAMESPACE` (downward-API
   conventions: these are not set by Kubernetes itself);
6. all ranks on this node (local world size = world size): the launcher
   process they share (host, parent pid and its start time), which is what
   single-node `torchrun` without `--rdzv-id` and `mpirun` give.

Rank: `RANK`, `OMPI_COMM_WORLD_RANK`, `PMIX_RANK`, `PMI_RANK`, `SLURM_PROCID`
(torchrun's `RANK` first: under Slurm one torchrun per node has a node-level
`SLURM_PROCID`). World size likewise from `WORLD_SIZE`, `OMPI_COMM_WORLD_SIZE`,
`PMI_SIZE`, `SLURM_NTASKS`. `default_run_id` picks the id of a run started without
one: derived as above when distributed, else a new UUID. Stdlib only; never raises.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NAMESPACE",
    "SCHEDULER_VARS",
    "Placement",
    "default_run_id",
    "derive_run_id",
    "placement",
]

log = logging.getLogger("agent.sdk")  # where start_run's warnings have always gone

NAMESPACE = uuid.UUID("6f1c7d3e-2b0a-5e4f-9a61-7472616e7472")
"""uuid5 namespace of run ids derived from a job identity."""

SCHEDULER_VARS = (
    # Slurm
    "SLURM_CLUSTER_NAME", "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_STEP_ID", "SLURM_PROCID",
    "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS", "SLURM_NNODES", "SLURM_JOB_NODELIST",
    "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT", "SLURM_JOB_QOS", "SLURM_RESTART_COUNT",
    "SLURM_SUBMIT_HOST",
    # torchrun / torch.distributed.elastic
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
    # MPI (Open MPI, PMI/PMIx: MPICH, Intel MPI, Slurm's srun --mpi)
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_NODE_RANK", "OMPI_MCA_ess_base_jobid",
    "OMPI_MCA_orte_ess_jobid", "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "PMIX_NAMESPACE",
    "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    # Kubernetes (service env, downward-API conventions, indexed Jobs)
    "KUBERNETES_SERVICE_HOST", "POD_NAME", "POD_NAMESPACE", "POD_UID", "NODE_NAME",
    "JOB_NAME", "JOB_UID", "JOB_COMPLETION_INDEX",
    "TRAINTRAIL_JOB_ID",
)  # fmt: skip

_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")
_SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
_LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
_LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


@dataclass(frozen=True)
class Placement:
    """Where this process sits in its job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = ""
    """torchrun, slurm, mpi, kubernetes, or '' when started by hand."""
    job_key: str | None = None
    """The job identity every rank sees alike; None when none was found."""
    variables: dict[str, str] = field(default_factory=dict)
    """The scheduler variables present, plus `launcher` and `job_key_source`."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        raw = env.get(name, "").strip()
        if raw:
            try:
                return int(raw)
            except ValueError:
                continue
    return None


def _launcher(env: Mapping[str, str]) -> str:
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "MASTER_ADDR" in env):
        return "torchrun"
    if any(k in env for k in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")):
        return "mpi"
    if "SLURM_JOB_ID" in env:
        return "slurm"
    if "KUBERNETES_SERVICE_HOST" in env:
        return "kubernetes"
    return ""


def _job_key(env: Mapping[str, str], world: int, local_world: int | None) -> tuple[str, str]:
    """(source, key) of the job identity; ("", "") when none is found."""
    if env.get("TRAINTRAIL_JOB_ID"):
        return "TRAINTRAIL_JOB_ID", env["TRAINTRAIL_JOB_ID"]
    elastic = env.get("TORCHELASTIC_RUN_ID", "")
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    if elastic and elastic.lower() != "none":
        return "TORCHELASTIC_RUN_ID", f"torchelastic:{elastic}:{restart}"
    if env.get("SLURM_JOB_ID"):
        parts = [
            env.get(k, "")
            for k in (
                "SLURM_CLUSTER_NAME",
                "SLURM_JOB_ID",
                "SLURM_ARRAY_JOB_ID",
                "SLURM_ARRAY_TASK_ID",
                "SLURM_STEP_ID",
                "SLURM_RESTART_COUNT",
            )
        ]
        # one torchrun per node under one srun: the step is shared, the elastic restart not
        return "SLURM_JOB_ID", "slurm:" + ":".join([*parts, restart])
    for name in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid"):
        if env.get(name):
            return name, f"mpi:{env[name]}"
    if env.get("JOB_UID"):
        return "JOB_UID", f"k8s:{env['JOB_UID']}"
    if env.get("JOB_NAME") and env.get("KUBERNETES_SERVICE_HOST"):
        return "JOB_NAME", f"k8s:{env.get('POD_NAMESPACE', '')}:{env['JOB_NAME']}"
    if world > 1 and local_world == world:  # every rank on this node: their launcher
        launcher = _parent_identity()
        if launcher:
            return "parent", f"parent:{launcher}:{restart}"
    return "", ""


def _parent_identity() -> str:
    """host:ppid:start-time of the parent process; '' when /proc cannot tell."""
    ppid = os.getppid()
    try:
        stat = Path(f"/proc/{ppid}/stat").read_text()
        start = stat[stat.rfind(")") + 2 :].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{socket.gethostname()}:{ppid}:{start}"


def placement(environ: Mapping[str, str] | None = None) -> Placement:
    """Rank, world size, launcher and job identity from `environ` (default os.environ)."""
    env = os.environ if environ is None else environ
    try:
        rank = _int(env, _RANK_VARS) or 0
        world = _int(env, _SIZE_VARS) or 1
        local_rank = _int(env, _LOCAL_RANK_VARS) or 0
        local_world = _int(env, _LOCAL_SIZE_VARS)
        if rank < 0 or world < 1 or rank >= world:
            rank, world = max(rank, 0), max(world, rank + 1)
        launcher = _launcher(env)
        source, key = _job_key(env, world, local_world)
        variables = {k: str(env[k]) for k in SCHEDULER_VARS if k in env}
        if launcher:
            variables["launcher"] = launcher
        if source:
            variables["job_key_source"] = source
        return Placement(rank, world, local_rank, launcher, key or None, variables)
    except Exception:  # an odd environment must never stop a run from starting
        return Placement()


def derive_run_id(job_key: str, project: str, name: str, ordinal: int) -> str:
    """The run id every rank of a job computes alike: uuid5 of the job identity,
    project, name and the how-manieth run of that project/name in the process."""
    return uuid.uuid5(NAMESPACE, f"{job_key}\0{project}\0{name}\0{ordinal}").hex


_ordinals: dict[tuple[str, str], int] = {}
_ordinals_lock = threading.Lock()


def default_run_id(project: str, name: str | None, where: Placement) -> tuple[str, bool]:
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
