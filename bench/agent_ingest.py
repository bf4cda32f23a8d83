"""The agent's ingest step alone, and what `[agent] malloc_keep_mb` changes in it.

CPU per message (the thread's own clock: fsync waits do not count) of
`Ingest.accept` — envelope, chain link, Avro encode, SHA-256, spool frame and
write, with the daemon's spool defaults — for the agent's three message
shapes, no Kafka involved. Each shape and setting runs in a process of its own,
because the malloc setting is process-wide: glibc's defaults (`malloc_keep_mb = 0`)
against the agent's default of 64 MB kept, alternated ROUNDS times, the
medians printed. The shipper is left out: it is the same either way, and
what it frees is what ingest allocated, which this reproduces by letting the
spool's memory copy (16 MB) hold and drop the values as the shipper would.

Then where a one-tick GPU message's ingest time goes, in this process: the
whole step, then the same loop with the seal (Avro encode + SHA-256)
replaced by a constant, with the spool append replaced by a no-op, and with
both (what is left is the loop's own Python); minima of 7 runs of 5,000
messages, 64 a commit as the group commit takes them.

    python bench/agent_ingest.py [ROUNDS=3]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CASE = """
import json, sys
sys.path.insert(0, {repo!r})
from agent.memory import keep_freed_memory
keep_freed_memory({keep_mb} * 2**20)
from bench.agent_ingest import SHAPES, timed_ingest
make, batch = SHAPES[{label!r}]
print(json.dumps({{{label!r}: timed_ingest(make(), batch)}}))
"""


def timed_ingest(
    events: list[dict[str, Any]],
    batch: int,
    no_seal: bool = False,
    no_spool: bool = False,
) -> float:
    """CPU µs per message of `Ingest.accept` over `events`, `batch` a call,
    into fresh spools with the daemon's defaults; `no_seal` replaces the seal
    with its own result for the first event, `no_spool` the samples spool's
    append with a no-op."""
    import tempfile
    import time

    from agent.envelope import Chain
    from agent.ingest import Ingest, _Kind
    from agent.spool import Spool
    from schemas import default_registry

    with tempfile.TemporaryDirectory() as tmp:
        critical = Spool(Path(tmp) / "c")  # fsync per batch, as the daemon's
        samples = Spool(Path(tmp) / "s", overflow="drop_oldest", fsync=False)
        critical.open()
        samples.open()
        ingest = Ingest(Chain(), critical, samples, default_registry(), "bench", "bench")
        if no_seal:
            name = events[0]["type"]
            kind = ingest._kind(name)
            sealed = kind.seal(events[0]["body"], ingest.chain.envelope("s", "e", 1, "n"))
            ingest._kinds[name] = _Kind(lambda _b, _e: sealed, kind.topic, kind.sample)
        if no_spool:
            samples.append = lambda entries: list(range(len(entries)))  # type: ignore[method-assign]
        t0 = time.thread_time()
        for i in range(0, len(events), batch):
            ingest.accept(events[i : i + batch])
        micros = (time.thread_time() - t0) / len(events) * 1e6
        critical.close()
        samples.close()
    return micros


def _gpu(n: int, ticks: int) -> list[dict[str, Any]]:
    from bench.agent_overhead import gpu_events

    return gpu_events(n, ticks)[0]


def _metrics(n: int) -> list[dict[str, Any]]:
    from bench.agent_overhead import metrics_events

    return metrics_events(n)[0]


# label -> (make the events, events a call)
SHAPES: dict[str, tuple[Callable[[], list[dict[str, Any]]], int]] = {
    "GpuSamples, 1 tick, 64 a commit": (lambda: _gpu(5000, 1), 64),
    "GpuSamples, 60 ticks": (lambda: _gpu(300, 60), 1),
    "Metrics, 10,000 points": (lambda: _metrics(300), 1),
}


def case(keep_mb: int, label: str) -> dict[str, float]:
    """One shape in a process of its own, with its own heap."""
    code = _CASE.format(repo=str(REPO), keep_mb=keep_mb, label=label)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def parts(runs: int = 7) -> dict[str, float]:
    """µs per one-tick message: the whole ingest step and with parts of it
    replaced (seal by its own result, spool append by a no-op)."""
    events = _gpu(5000, 1)
    return {
        label: min(timed_ingest(events, 64, no_seal, no_spool) for _ in range(runs))
        for label, no_seal, no_spool in (
            ("whole ingest step", False, False),
            ("seal replaced by a constant", True, False),
            ("spool append replaced by a no-op", False, True),
            ("both replaced: the loop's own Python", True, True),
        )
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    runs: dict[int, list[dict[str, float]]] = {0: [], 64: []}
    for _ in range(rounds):
        for keep_mb in runs:
            result: dict[str, float] = {}
            for label in SHAPES:
                result.update(case(keep_mb, label))
            runs[keep_mb].append(result)
    title = f"ingest CPU per message (µs), median of {rounds}"
    print(f"{title:<44} {'keep 0':>8} {'keep 64':>8}")
    for label in runs[0][0]:
        default, kept = (statistics.median(r[label] for r in runs[k]) for k in runs)
        print(f"{label:<44} {default:>8.1f} {kept:>8.1f}")
    print()
    print("where a one-tick GPU message's ingest CPU goes (µs, minimum of 7)")
    for label, micros in parts().items():
        print(f"  {label:<42} {micros:>8.1f}")


if __name__ == "__main__":
    main()
