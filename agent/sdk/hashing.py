"""Content hashes of datasets and checkpoints: streamed, parallel, cached.

A dataset directory is hashed as a manifest (sorted `relpath<TAB>sha256<LF>`
lines), so its hash names the exact files a run read. Re-runs on the same
data are the common case, so each file's hash is cached in a small SQLite
file keyed by path, size, mtime, ctime and inode: an unchanged file is not
read again. A file modified within the last two seconds is hashed but not
cached (its mtime may not have ticked yet: git's "racily clean" problem), and
ctime, which a user cannot set back, catches content rewritten with the old
size and mtime restored. Files are read in 1 MiB chunks on a few threads;
hashlib releases the GIL while it digests, so they run in parallel.

`TRAINTRAIL_HASH_CACHE` names the cache file (default
`~/.cache/traintrail/sha256.sqlite`); `off` disables it. A cache that cannot
be opened or written is skipped, never an error: the hash is always computed
from content when the cache has no valid entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

__all__ = ["cache_path", "hash_path", "sha256_file", "sha256_tree"]

_CHUNK = 1024 * 1024
_RACY_NS = 2_000_000_000  # younger files are hashed, not cached
_WORKERS = min(8, os.cpu_count() or 1)
_now = time.time_ns  # a seam for tests: "later" without waiting
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    ino INTEGER, sha256 TEXT
)
"""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (never whole into memory)."""
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
    with _cache() as cache:
        return _file_hashes([p], cache)[0], p.stat().st_size


def cache_path() -> Path | None:
    """Where file hashes are cached; None when TRAINTRAIL_HASH_CACHE is `off`."""
    configured = os.environ.get("TRAINTRAIL_HASH_CACHE", "")
    if configured.lower() in {"off", "none", "0"}:
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "traintrail" / "sha256.sqlite"


def _tree(root: Path) -> tuple[str, int]:
    files: list[tuple[str, Path]] = []
    for top, _dirs, names in os.walk(root, onerror=_raise):
        for name in names:
            full = Path(top, name)
            files.append((full.relative_to(root).as_posix(), full))
    files.sort()
    with _cache() as cache:
        digests = _file_hashes([full for _rel, full in files], cache)
    manifest = hashlib.sha256()
    size = 0
    for (rel, full), digest in zip(files, digests, strict=True):
        manifest.update(f"{rel}\t{digest}\n".encode("utf-8", "surrogateescape"))
        size += full.stat().st_size
    return manifest.hexdigest(), size


def _file_hashes(paths: list[Path], cache: sqlite3.Connection | None) -> list[str]:
    """Hashes of `paths` in order: cached where the file is unchanged, else read
    (in parallel) and cached when old enough to trust its mtime."""
    stats = [p.stat() for p in paths]
    keys = [str(p.resolve()) for p in paths]
    found: dict[int, str] = {}
    if cache is not None:
        for i, (key, st) in enumerate(zip(keys, stats, strict=True)):
            row = _lookup(cache, key)
            if row is not None and row[:4] == _identity(st):
                found[i] = row[4]
    missing = [i for i in range(len(paths)) if i not in found]
    if len(missing) > 1 and _WORKERS > 1:
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="traintrail-hash") as pool:
            digests = list(pool.map(sha256_file, [paths[i] for i in missing]))
        found.update(zip(missing, digests, strict=True))
    else:
        found.update((i, sha256_file(paths[i])) for i in missing)
    if cache is not None and missing:
        now = _now()
        rows = [
            (keys[i], *_identity(stats[i]), found[i])
            for i in missing
            if now - (st := stats[i]).st_mtime_ns > _RACY_NS and now - st.st_ctime_ns > _RACY_NS
        ]
        with contextlib.suppress(_sqlite_errors()):
            cache.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
            cache.commit()
    return [found[i] for i in range(len(paths))]


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _lookup(cache: sqlite3.Connection, key: str) -> tuple[int, int, int, int, str] | None:
    try:
        row = cache.execute(
            "SELECT size, mtime_ns, ctime_ns, ino, sha256 FROM files WHERE path = ?", (key,)
        ).fetchone()
    except _sqlite_errors():
        return None
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4])


@contextlib.contextmanager
def _cache() -> Iterator[sqlite3.Connection | None]:
    """The cache connection, or None when disabled or unusable."""
    path = cache_path()
    if path is None:
        yield None
        return
    import sqlite3  # only here: `import agent.sdk` stays light

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5.0)
        conn.execute(_SCHEMA)
    except (OSError, sqlite3.Error):
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


def _sqlite_errors() -> type[Exception]:
    import sqlite3

    return sqlite3.Error


def _raise(error: OSError) -> None:
    raise error
