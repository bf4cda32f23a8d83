"""What a run ran with: the RunStarted context snapshot and content hashes.

An auditor asking "what produced this model" needs the code (git), the
interpreter and installed packages, the process (host, user, argv, cwd) and
the hyperparameters, captured when the run starts. Collecting it must never
fail a training script, so every probe degrades to None/empty instead of
raising; only an unsupported *config* type is the caller's error. Environment
variables are deliberately not captured (they hold secrets; a redacted view
comes later). The file/directory hashes that identify checkpoints and
datasets live here too: they are the "which bytes" half of the same record.

Stdlib only: this runs inside training processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import getpass
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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

GIT_TIMEOUT_S = 2.0
"""Upper bound for each `git` probe; a hung git (network FS, huge repo) costs no more."""

_CHUNK = 1024 * 1024


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


# -- git ----------------------------------------------------------------------------------


def git_state(cwd: str, timeout: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """commit, branch, dirty, remote of the work tree containing `cwd`; all None outside one.

    `dirty` counts changes to tracked files (as `git describe --dirty` does);
    `branch` is None on a detached HEAD; `remote` is origin's (else the first
    remote's) URL with credentials stripped.
    """
    state: dict[str, Any] = {"commit": None, "branch": None, "dirty": None, "remote": None}
    if _git(cwd, timeout, "rev-parse", "--is-inside-work-tree") != "true":
        return state
    state["commit"] = _git(cwd, timeout, "rev-parse", "--verify", "-q", "HEAD")
    state["branch"] = _git(cwd, timeout, "symbolic-ref", "-q", "--short", "HEAD")
    status = _git(cwd, timeout, "status", "--porcelain", "--untracked-files=no")
    state["dirty"] = None if status is None else status != ""
    remote = _git(cwd, timeout, "config", "--get", "remote.origin.url")
    if not remote:
        names = (_git(cwd, timeout, "remote") or "").split()
        remote = _git(cwd, timeout, "config", "--get", f"remote.{names[0]}.url") if names else None
    state["remote"] = strip_credentials(remote) if remote else None
    return state


def _git(cwd: str, timeout: float, *args: str) -> str | None:
    """stdout of `git args...` stripped, or None when git fails, is missing or hangs."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace").strip()


def strip_credentials(url: str) -> str:
    """The URL without user:password (http/https: without the user, often a token).

    scp-like remotes (`git@host:org/repo.git`) carry no secret and are kept.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc or "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    keep_user = parts.scheme not in ("http", "https") and user
    netloc = f"{user}@{hostport}" if keep_user else hostport
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- interpreter, packages, process -------------------------------------------------------


def python_info() -> dict[str, str]:
    """version, implementation and executable of the running interpreter."""
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable or "",
    }


def installed_packages() -> dict[str, str]:
    """name → version of every installed distribution, sorted; the first on sys.path wins."""
    import importlib.metadata  # slow to import (email, zipfile): only the worker needs it

    found: dict[str, str] = {}
    try:
        for dist in importlib.metadata.distributions():
            try:
                name = dist.metadata["Name"]
                version = dist.version
            except Exception:  # noqa: S112 - a broken dist-info must not hide the others
                continue
            if name and name not in found:
                found[str(name)] = str(version or "")
    except Exception:  # noqa: S110 - an unreadable sys.path entry ends the scan, not the run
        pass
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers) and no LOGNAME/USER
        return str(os.getuid()) if hasattr(os, "getuid") else ""


def _platform() -> str:
    try:
        return platform.platform()
    except Exception:
        return sys.platform


def snapshot(
    *,
    run_id: str,
    project: str,
    name: str,
    config: dict[str, str],
    argv: list[str],
    cwd: str,
    pid: int,
) -> dict[str, Any]:
    """The RunStarted body. Slow parts (git, package scan) run here, off the training thread."""
    return {
        "run_id": run_id,
        "project": project,
        "name": name,
        "user": _user(),
        "host": socket.gethostname(),
        "pid": pid,
        "command": argv,
        "cwd": cwd,
        "config": config,
        "git": git_state(cwd),
        "python": python_info(),
        "os": _platform(),
        "packages": installed_packages(),
    }


# -- content hashes -----------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(root: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a directory's manifest: sorted `relpath<TAB>sha256<LF>` lines.

    Paths are relative to `root` with `/` separators; symlinked directories are
    not followed (a cycle must not hang the run), symlinked files are hashed by
    content. Any file's content, name or presence changes the result.
    """
    return _tree(Path(root))[0]


def hash_path(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(sha256, size in bytes) of a file, or of a directory (manifest hash, total size)."""
    p = Path(path)
    if p.is_dir():
        return _tree(p)
    return sha256_file(p), p.stat().st_size


def _tree(root: Path) -> tuple[str, int]:
    files: list[tuple[str, Path]] = []
    for top, _dirs, names in os.walk(root, onerror=_raise):
        for name in names:
            full = Path(top, name)
            files.append((full.relative_to(root).as_posix(), full))
    manifest = hashlib.sha256()
    size = 0
    for rel, full in sorted(files):
        manifest.update(f"{rel}\t{sha256_file(full)}\n".encode("utf-8", "surrogateescape"))
        size += full.stat().st_size
    return manifest.hexdigest(), size


def _raise(error: OSError) -> None:
    raise error
