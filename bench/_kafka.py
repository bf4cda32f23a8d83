"""A broker for the benchmarks: the env's, or the local one started here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bootstrap() -> str:
    if os.environ.get("TRAINTRAIL_KAFKA_BOOTSTRAP"):
        return os.environ["TRAINTRAIL_KAFKA_BOOTSTRAP"]
    env = {
        **os.environ,
        "TRAINTRAIL_KAFKA_HOME": str(REPO / ".traintrail" / "bench-kafka"),
        "TRAINTRAIL_KAFKA_PORT": os.environ.get("BENCH_KAFKA_PORT", "19192"),
    }
    subprocess.run([str(REPO / "deploy/local/kafka.sh"), "start"], env=env, check=True)
    out = subprocess.run(
        [str(REPO / "deploy/local/kafka.sh"), "bootstrap"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()
