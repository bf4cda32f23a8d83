"""Framework callbacks, each driving a tiny real model on CPU into a real stack.

Every test here needs the `traintrail[frameworks]` extra (torch, Lightning,
transformers) and skips without it. Training runs in the test process, its
callback pointed at a real agent subprocess; assertions read what the
collector stored in ClickHouse.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import AgentProc, CollectorProc, stack_env, wait_for

__all__ = ["finished_run", "running_stack", "series"]


@contextlib.contextmanager
def running_stack(
    tmp_path: Path, bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[CollectorProc, AgentProc]]:
    """A collector and an agent of this test's own; the SDK here spools under tmp_path."""
    env = stack_env(tmp_path, bootstrap, f"fw{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("TRAINTRAIL_SDK_SPOOL_DIR", env["TRAINTRAIL_SDK_SPOOL_DIR"])
    collector = CollectorProc(tmp_path / "collector", env).start()
    agent = AgentProc(tmp_path / "agent", env).start()
    try:
        yield collector, agent
    finally:
        for proc in (agent, collector):
            if proc.alive():
                assert proc.stop() == 0, proc.log()


def finished_run(collector: CollectorProc, run_id: str) -> dict[str, Any]:
    """The run as the API shows it, once its RunFinished has been stored."""
    wait_for(
        "the run finished in ClickHouse",
        lambda: collector.scalar(
            f"SELECT count() FROM run_finished FINAL WHERE run_id = '{run_id}'"
        ),
        timeout=120,
    )
    run = collector.get(f"/runs/{run_id}")
    assert isinstance(run, dict)
    return run


def series(collector: CollectorProc, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, by step."""
    rows = collector.sql(
        f"SELECT step, value FROM metrics FINAL WHERE run_id = '{run_id}' AND name = '{name}'"
        " ORDER BY step"
    )
    return [(int(r["step"]), float(r["value"])) for r in rows]
