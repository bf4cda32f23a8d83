"""Which code ran: git state of the work tree, the entry script's hash, bounded probes.

`git_state` answers "which commit, and was it modified": commit, branch,
remote URL without credentials, the dirty flag (tracked changes, as `git
describe --dirty` counts them), the SHA-256 of `git diff --binary HEAD` (an
auditor re-computes it with `git diff --binary HEAD | sha256sum` on a
checkout with the same changes), and the changed and untracked paths.
`script_info` hashes the file the process runs. Every external command runs
under a timeout and is abandoned (not waited for) when it hangs, so a stuck
git on a network file system costs seconds, never the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["GIT_TIMEOUT_S", "MAX_PATHS", "git_state", "run_bounded", "script_info",
           "strip_credentials"]  # fmt: skip

GIT_TIMEOUT_S = 2.0
"""Upper bound for each `git` probe; a hung git (network FS, huge repo) costs no more."""
MAX_PATHS = 1000
"""Most changed/untracked paths recorded; beyond, one `...(N more)` entry says how many."""
MAX_SCRIPT_BYTES = 64 * 1024 * 1024


def run_bounded(args: list[str], cwd: str | None, timeout: float) -> bytes | None:
    """stdout of a command, or None when it fails, is missing or outlives `timeout`.

    A command stuck in the kernel (nvidia-smi on a wedged GPU, git on a dead
    NFS mount) cannot be killed; it is abandoned instead of awaited.
    """
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, ValueError):
        return None
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            proc.wait(0.2)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        return None
    except OSError:
        return None
    return out if proc.returncode == 0 else None


def _git(cwd: str, timeout: float, *args: str) -> str | None:
    out = run_bounded(["git", *args], cwd, timeout)
    return None if out is None else out.decode("utf-8", "replace").strip()


def git_state(cwd: str, timeout: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """The git record of the work tree containing `cwd`; None/empty outside one.

    Keys: commit, branch (None on a detached HEAD), dirty, remote (origin's,
    else the first remote's URL, credentials stripped), diff_sha256,
    changed_files (tracked paths differing from HEAD, staged or not; renames
    give the new path) and untracked_files (not ignored; an untracked
    directory is listed once, with a trailing `/`).
    """
    state: dict[str, Any] = {
        "commit": None, "branch": None, "dirty": None, "remote": None,
        "diff_sha256": None, "changed_files": [], "untracked_files": [],
    }  # fmt: skip
    if _git(cwd, timeout, "rev-parse", "--is-inside-work-tree") != "true":
        return state
    state["commit"] = _git(cwd, timeout, "rev-parse", "--verify", "-q", "HEAD")
    state["branch"] = _git(cwd, timeout, "symbolic-ref", "-q", "--short", "HEAD")
    status = run_bounded(
        ["git", "status", "--porcelain=v1", "-z", "--untracked-files=normal"], cwd, timeout
    )
    if status is not None:
        changed, untracked = _parse_status(status)
        state["dirty"] = bool(changed)
        state["changed_files"] = _cap(changed)
        state["untracked_files"] = _cap(untracked)
    if state["commit"] is not None:
        diff = run_bounded(
            ["git", "diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", "HEAD"],
            cwd,
            timeout,
        )
        if diff is not None:
            state["diff_sha256"] = hashlib.sha256(diff).hexdigest()
    remote = _git(cwd, timeout, "config", "--get", "remote.origin.url")
    if not remote:
        names = (_git(cwd, timeout, "remote") or "").split()
        remote = _git(cwd, timeout, "config", "--get", f"remote.{names[0]}.url") if names else None
    state["remote"] = strip_credentials(remote) if remote else None
    return state


def _parse_status(raw: bytes) -> tuple[list[str], list[str]]:
    """(changed, untracked) paths from `git status --porcelain=v1 -z`."""
    changed: list[str] = []
    untracked: list[str] = []
    entries = raw.split(b"\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        xy, path = entry[:2].decode(), entry[3:].decode("utf-8", "surrogateescape")
        if xy == "??":
            untracked.append(path)
        elif xy != "!!":
            changed.append(path)
            if "R" in xy or "C" in xy:
                i += 1  # the original path of a rename/copy follows
    return sorted(changed), sorted(untracked)


def _cap(paths: list[str]) -> list[str]:
    clean = [p.encode("utf-8", "replace").decode() for p in paths]
    if len(clean) <= MAX_PATHS:
        return clean
    return [*clean[:MAX_PATHS], f"...({len(clean) - MAX_PATHS} more)"]


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


def script_info(argv: list[str], cwd: str) -> dict[str, str | None]:
    """script_path (absolute) and script_sha256 of the entry script, None when there
    is no file (`python -c`, a REPL, stdin) or it cannot be read."""
    candidates = []
    if argv and argv[0] not in ("", "-c", "-m", "-"):
        candidates.append(argv[0])
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main, str):
        candidates.append(main)
    for candidate in candidates:
        path = Path(cwd, candidate) if cwd else Path(candidate)
        try:
            if not path.is_file() or path.stat().st_size > MAX_SCRIPT_BYTES:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue
        return {"script_path": str(path.resolve()), "script_sha256": digest}
    return {"script_path": None, "script_sha256": None}
