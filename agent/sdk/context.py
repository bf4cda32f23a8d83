"""What a run ran with: the RunStarted context snapshot and content hashes.

An auditor asking "what produced this model" needs the code, the environment,
the hyperparameters, the seeds and the process's place in its job, captured
when the run starts. This module assembles them; the parts live beside it:

- `agent.sdk.code`: git commit/branch/remote/dirty, diff hash, changed and
  untracked files; the entry script's hash;
- `agent.sdk.environment`: Python, packages, OS/kernel, container, GPU
  stack, framework versions and determinism flags;
- `agent.sdk.redact`: the environment variables, with secrets redacted (as
  are secret-looking command-line arguments and config values);
- `agent.sdk.scheduler`: Slurm/torchrun/MPI/Kubernetes rank and job identity.

Collecting it must never fail a training script, so every probe degrades to
None/empty instead of raising; only an unsupported *config* type is the
caller's error. The file/directory hashes that identify checkpoints and
datasets live here too: they are the "which bytes" half of the same record.

Stdlib only: this runs inside training processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import getpass
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

from agent.sdk import environment, redact
from agent.sdk.code import GIT_TIMEOUT_S, git_state, script_info, strip_credentials
from agent.sdk.environment import installed_packages, python_info
from agent.sdk.hashing import hash_path, sha256_file, sha256_tree

__all__ = [
    "GIT_TIMEOUT_S",
    "flatten_config",
    "git_state",
    "hash_path",
    "installed_packages",
    "python_info",
    "sha256_file",
    "sha256_tree",
    "snapshot",
    "strip_credentials",
]

log = logging.getLogger(__name__)


# -- config -------------------------------------------------------------------------------


def flatten_config(config: object) -> dict[str, str]:
    """Flatten a Mapping, dataclass instance or argparse.Namespace to dotted keys.

    Nested mappings/dataclasses/namespaces become `outer.inner` keys; every leaf
    is JSON-encoded (lists stay JSON arrays). Keys come back sorted, so the same
    config always yields the same snapshot. Raises TypeError for other types.
    """
    if config is None:
        return {}
    if not _is_node(config):
        raise TypeError(
            "config must be a Mapping, a dataclass instance or an argparse.Namespace, "
            f"not {type(config).__name__}"
        )
    flat: dict[str, str] = {}
    _flatten("", config, flat)
    return dict(sorted(flat.items()))


def _is_node(value: object) -> bool:
    return isinstance(value, Mapping | argparse.Namespace) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def _children(value: object) -> list[tuple[str, object]]:
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, argparse.Namespace):
        return [(str(k), v) for k, v in vars(value).items()]
    assert dataclasses.is_dataclass(value) and not isinstance(value, type)
    return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]


def _flatten(prefix: str, value: object, out: dict[str, str]) -> None:
    children = _children(value)
    if not children and prefix:
        out[prefix] = "{}"
    for key, child in children:
        dotted = f"{prefix}.{key}" if prefix else key
        if _is_node(child):
            _flatten(dotted, child, out)
        else:
            out[dotted] = json.dumps(child, sort_keys=True, allow_nan=True, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.hex()
    if _is_node(value):
        return dict(_children(value))
    item = getattr(value, "item", None)  # numpy/torch scalars
    if callable(item):
        try:
            return item()
        except Exception:  # noqa: S110 - not a scalar after all; fall back to str
            pass
    return str(value)


# -- the snapshot ---------------------------------------------------------------------


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers) and no LOGNAME/USER
        return str(os.getuid()) if hasattr(os, "getuid") else ""


def _probe(what: str, probe: Callable[[], Any], default: Any) -> Any:
    """probe(), or `default` and one debug line: one failing part must not lose the rest."""
    try:
        return probe()
    except Exception as exc:
        log.debug("traintrail: context probe %s failed: %s", what, exc)
        return default


def snapshot(
    *,
    run_id: str,
    project: str,
    name: str,
    config: dict[str, str],
    argv: list[str],
    cwd: str,
    pid: int,
    seeds: Mapping[str, int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    attached: bool = False,
    scheduler: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The RunStarted body. Slow parts (git, package scan, nvidia-smi) run here, off
    the training thread. Secrets in env, argv and config are redacted here."""
    env = dict(os.environ if environ is None else environ)
    no_git: dict[str, Any] = {
        "commit": None, "branch": None, "dirty": None, "remote": None,
        "diff_sha256": None, "changed_files": [], "untracked_files": [],
    }  # fmt: skip
    no_gpu: dict[str, Any] = {"cuda_driver": None, "cuda_runtime": None, "cudnn": None, "gpus": []}
    os_info = _probe("os", environment.os_info, {"os": "", "kernel": "", "distro": ""})
    gpu = _probe("gpu", environment.gpu_info, no_gpu)
    container = _probe(
        "container", environment.container_info, {"container_image": None, "container_id": None}
    )
    script = _probe(
        "script", lambda: script_info(argv, cwd), {"script_path": None, "script_sha256": None}
    )
    sched = {k: redact.redact_value(v) for k, v in (scheduler or {}).items()}

    def flags() -> dict[str, str]:
        return {k: redact.redact_value(v) for k, v in environment.deterministic_flags().items()}

    return {
        "run_id": run_id,
        "project": project,
        "name": name,
        "user": _user(),
        "host": _probe("host", socket.gethostname, ""),
        "pid": pid,
        "command": _probe("command", lambda: redact.redact_argv(argv), []),
        "cwd": cwd,
        "config": _probe("config", lambda: redact.redact_config(config), {}),
        "git": _probe("git", lambda: git_state(cwd), no_git),
        "python": python_info(),
        "os": os_info["os"],
        "packages": _probe("packages", installed_packages, {}),
        "script_path": script["script_path"],
        "script_sha256": script["script_sha256"],
        "kernel": os_info["kernel"],
        "distro": os_info["distro"],
        "container_image": _opt(container["container_image"], redact.redact_value),
        "container_id": container["container_id"],
        "cuda_driver": gpu["cuda_driver"],
        "cuda_runtime": gpu["cuda_runtime"],
        "cudnn": gpu["cudnn"],
        "gpus": gpu["gpus"],
        "frameworks": _probe("frameworks", environment.frameworks, {}),
        "seeds": dict(sorted((seeds or {}).items())),
        "deterministic": _probe("deterministic", flags, {}),
        "env": _probe("env", lambda: redact.redact_env(env), {}),
        "scheduler": dict(sorted(sched.items())),
        "rank": rank,
        "world_size": world_size,
        "attached": attached,
    }


def _opt(value: str | None, fn: Callable[[str], str]) -> str | None:
    return None if value is None else fn(value)
