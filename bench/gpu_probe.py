"""What the GPU source reads on this node, and what a sample costs.

Runs the agent's NVML source against the real pynvml for DURATION seconds at
INTERVAL, then prints: the devices, each GpuSample field with its last value
(null = NVML said not supported here), the time one tick took (median/max,
all devices) and the source's CPU per second of wall time, and checks that
every tick's GpuSamples message encodes with the current schema. Useful on a new GPU model.

    python bench/gpu_probe.py [DURATION_S=10] [INTERVAL_S=1]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from agent.runs import RunRegistry
from agent.sources.nvml import GpuConfig, NvmlSource
from schemas.gpu_packed import unpack_rows


def main() -> None:
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    source = NvmlSource(GpuConfig(interval_s=interval), "probe", RunRegistry())
    ticks: list[tuple[float, list[dict[str, Any]]]] = []
    last = [time.perf_counter()]

    def emit(events: list[dict[str, Any]]) -> None:
        now = time.perf_counter()
        ticks.append((now, events))
        last[0] = now

    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(emit, stop))
    t0 = time.perf_counter()
    proc0 = time.process_time()
    thread.start()
    time.sleep(duration)
    stop.set()
    thread.join(10)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - proc0
    messages = [e for _, evs in ticks for e in evs if e["type"] == "GpuSamples"]
    samples = [row for m in messages for row in unpack_rows(m["body"])]
    if not samples:
        print(f"no GPU samples: {source.stats.detail or 'NVML gave nothing'}")
        return
    print(
        f"ticks {len(ticks)}, samples {len(samples)}, GPU events "
        f"{sum(1 for _, evs in ticks for e in evs if e['type'] == 'GpuEvent')}"
    )
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(ticks)]
    if gaps:
        print(f"tick spacing median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s")
    print(
        f"process CPU while sampling: {100 * cpu / wall:.2f} % of one core "
        f"(includes this probe's own idle threads)"
    )
    body = samples[-1]
    print(f"\nlast sample of {body['name']} ({body['gpu_uuid']}):")
    for key, value in body.items():
        if key != "processes":
            print(f"  {key:<32} {value}")
    print(f"  processes                        {body['processes']}")
    nulls = sorted(k for k, v in body.items() if v is None)
    print(f"\nnull (not supported here): {', '.join(nulls) or 'none'}")
    try:
        from schemas import default_registry, encode
        from tests.samples import envelope

        for m in messages:
            encode(default_registry(), "GpuSamples", {**m["body"], "envelope": envelope()})
        print(
            f"all {len(messages)} messages ({len(samples)} samples) encode with GpuSamples "
            f"v{default_registry().current('GpuSamples').version}"
        )
    except ImportError as exc:
        print(f"(encode check skipped: {exc})")


if __name__ == "__main__":
    main()
