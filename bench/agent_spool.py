"""What the default `[spool] fsync = true` costs: append latency per batch.

Appends batches of typical SDK size (1, 10 and 100 records of ~600 bytes)
to a real spool directory with fsync per batch and without, and prints the
median and p99 per batch and records/s, next to a bare `write()+fsync()` of
the same bytes (the disk's own limit) measured in the same run.

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


def bench(root: Path, batch: int, fsync: bool, batches: int) -> list[float]:
    shutil.rmtree(root, ignore_errors=True)
    spool = Spool(root, fsync=fsync)
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


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    root = Path(sys.argv[2] if len(sys.argv) > 2 else ".traintrail/bench-spool")
    print(f"{'records/batch':>13} {'mode':<16} {'median µs':>10} {'p99 µs':>10} {'records/s':>12}")
    for batch in (1, 10, 100):
        rows = [
            ("fsync (default)", bench(root / "a", batch, True, batches)),
            ("no fsync", bench(root / "b", batch, False, batches)),
            ("bare write+fsync", bare(root / "c", batch, batches)),
        ]
        for mode, times in rows:
            med = statistics.median(times)
            print(
                f"{batch:>13} {mode:<16} {med * 1e6:>10.0f} {_pct(times, 0.99) * 1e6:>10.0f} "
                f"{batch / med:>12,.0f}"
            )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
