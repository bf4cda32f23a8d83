"""What the default `[spool] fsync = true` costs: append latency per batch.

Appends batches of typical SDK size (1, 10 and 100 records of ~600 bytes)
to a real spool directory with fsync per batch and without, and prints the
median and p99 per batch and records/s, next to a bare `write()+fsync()` of
the same bytes (the disk's own limit) measured in the same run.

Then the other direction: a shipper that fell behind (Kafka away, or slower
than the senders) reads its records back from disk, 500 per call as the
shipper does. Records/s and MB/s of that, for a GPU message of one tick and
of 60 ticks, next to a bare sequential read of the same segment files.

    python bench/agent_spool.py [BATCHES=300] [DIR=.traintrail/bench-spool]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.spool import Spool

RECORD = ("traintrail.training", b"run-key", b"x" * 600)


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def bench(root: Path, batch: int, fsync: bool, batches: int, interval: float = 0.0) -> list[float]:
    shutil.rmtree(root, ignore_errors=True)
    spool = Spool(root, fsync=fsync, fsync_interval=interval)
    spool.open()
    entries = [RECORD] * batch
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        spool.append(entries)
        times.append(time.perf_counter() - t0)
    spool.close()
    return times


def bare(root: Path, batch: int, batches: int) -> list[float]:
    root.mkdir(parents=True, exist_ok=True)
    blob = b"y" * (len(RECORD[2]) + 40) * batch
    times = []
    with (root / "bare").open("ab") as fh:
        for _ in range(batches):
            t0 = time.perf_counter()
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
            times.append(time.perf_counter() - t0)
    return times


def read_back(root: Path, size: int, total_bytes: int) -> tuple[float, float]:
    """Seconds to read every record back through `Spool.read` (memory copy
    off, as when the shipper lags) and to read the same files bare."""
    shutil.rmtree(root, ignore_errors=True)
    spool = Spool(root, fsync=False, memory_bytes=0)
    spool.open()
    count = max(1, total_bytes // size)
    record = ("traintrail.gpu", b"node", os.urandom(size))
    for i in range(0, count, 100):
        spool.append([record] * min(100, count - i))
    t0 = time.perf_counter()
    cursor, got = spool.first_rid(), 0
    while True:
        records, cursor = spool.read(cursor, 500)
        if not records:
            break
        got += len(records)
    spooled = time.perf_counter() - t0
    assert got == count, (got, count)
    t0 = time.perf_counter()
    for path in sorted(root.glob("*.seg")):
        with path.open("rb") as fh:
            while fh.read(4 << 20):
                pass
    return spooled, time.perf_counter() - t0


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    root = Path(sys.argv[2] if len(sys.argv) > 2 else ".traintrail/bench-spool")
    print(f"{'records/batch':>13} {'mode':<17} {'median µs':>10} {'p99 µs':>10} {'records/s':>12}")
    for batch in (1, 10, 100):
        rows = [
            ("fsync (default)", bench(root / "a", batch, True, batches)),
            ("fsync every 100ms", bench(root / "d", batch, True, batches, 0.1)),
            ("no fsync", bench(root / "b", batch, False, batches)),
            ("bare write+fsync", bare(root / "c", batch, batches)),
        ]
        for mode, times in rows:
            med = statistics.median(times)
            print(
                f"{batch:>13} {mode:<17} {med * 1e6:>10.0f} {_pct(times, 0.99) * 1e6:>10.0f} "
                f"{batch / med:>12,.0f}"
            )
    print()
    print(f"{'read back':<26} {'records/s':>12} {'MB/s':>8} {'bare read MB/s':>15}")
    for label, size in (("GpuSamples, 1 tick", 3_140), ("GpuSamples, 60 ticks", 168_820)):
        total = 300 * 2**20
        spooled, bare_s = read_back(root / "r", size, total)
        count = total // size
        print(
            f"{label:<26} {count / spooled:>12,.0f} {count * size / spooled / 1e6:>8,.0f} "
            f"{count * size / bare_s / 1e6:>15,.0f}"
        )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
