"""Dataset and checkpoint hashing: manifest hashes, the size+mtime cache, parallel reads."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.sdk import hashing

OLD_NS = 1_600_000_000 * 10**9  # 2020: old enough to cache


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[Path]]:
    """A private cache file, and the list of files actually read for hashing."""
    monkeypatch.setenv("TRAINTRAIL_HASH_CACHE", str(tmp_path / "cache" / "h.sqlite"))
    seen: list[Path] = []
    real = hashing.sha256_file

    def counting(path: str | os.PathLike[str]) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    yield seen


def _dataset(root: Path, files: int = 40) -> Path:
    for i in range(files):
        path = root / f"shard-{i % 4}" / f"part-{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([i]) * (1000 + i))
        os.utime(path, ns=(OLD_NS, OLD_NS))
    return root


def _manifest(root: Path) -> str:
    lines = sorted(
        f"{p.relative_to(root).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in root.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """ctime cannot be set back: make files look settled by moving "now" on instead."""
    monkeypatch.setattr(hashing, "_now", lambda: time.time_ns() + 10 * 10**9)


@pytest.mark.usefixtures("settled")
def test_second_hash_of_unchanged_data_reads_nothing(reads: list[Path], tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    first = hashing.hash_path(data)
    assert len(reads) == 40
    reads.clear()
    assert hashing.hash_path(data) == first
    assert reads == []  # every file answered from the cache
    assert first[0] == _manifest(data)
    assert first[1] == sum(1000 + i for i in range(40))


@pytest.mark.usefixtures("settled")
def test_changed_file_is_read_again_even_with_size_and_mtime_restored(
    reads: list[Path], tmp_path: Path
) -> None:
    data = _dataset(tmp_path / "data")
    first = hashing.hash_path(data)
    victim = data / "shard-1" / "part-005.bin"
    victim.write_bytes(b"\xff" * victim.stat().st_size)  # same size...
    os.utime(victim, ns=(OLD_NS, OLD_NS))  # ...and the old mtime put back
    reads.clear()
    second = hashing.hash_path(data)
    assert reads == [victim]  # ctime moved: only that file is read again
    assert second[0] != first[0] and second[0] == _manifest(data)


def test_recently_modified_files_are_not_cached(reads: list[Path], tmp_path: Path) -> None:
    """Within the mtime granularity a same-size rewrite is invisible: never trust it."""
    data = tmp_path / "fresh"
    data.mkdir()
    (data / "a").write_bytes(b"x" * 100)
    first = hashing.hash_path(data)
    (data / "a").write_bytes(b"y" * 100)
    assert hashing.hash_path(data) != first
    assert len(reads) == 2


def test_cache_off_and_unusable_cache_still_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = _dataset(tmp_path / "data", files=5)
    monkeypatch.setenv("TRAINTRAIL_HASH_CACHE", "off")
    assert hashing.cache_path() is None
    expected = hashing.hash_path(data)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("TRAINTRAIL_HASH_CACHE", str(blocker / "h.sqlite"))
    assert hashing.hash_path(data) == expected
    assert expected[0] == _manifest(data)


def test_single_file_and_parallel_paths_agree(reads: list[Path], tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", files=12)
    big = data / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # several chunks
    digest, size = hashing.hash_path(big)
    assert digest == hashlib.sha256(big.read_bytes()).hexdigest() and size == big.stat().st_size
    assert hashing.sha256_tree(data) == _manifest(data)
