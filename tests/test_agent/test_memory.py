"""`[agent] malloc_keep_mb`: freed large blocks are reused, not faulted in again.

Counted in page faults, which the kernel counts exactly: a round of fifty
280 KB messages (a Metrics line's size) allocated, held and freed, as the
agent holds values until Kafka acknowledges them. Each case runs in its own
process: the setting is process-wide.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.memory import keep_freed_memory
from schemas.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]

_ROUNDS = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from agent.memory import keep_freed_memory
applied = keep_freed_memory({keep})
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [b"x" * 280_000 for _ in range(50)]
    del held
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def _rounds(keep: int) -> dict[str, object]:
    code = _ROUNDS.format(repo=str(REPO), keep=keep)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults() -> None:
    default, kept = _rounds(0), _rounds(64 * 2**20)
    assert default["applied"] is False and kept["applied"] is True
    pages = 50 * 280_000 // 4096
    # glibc's defaults give the freed 14 MB back each round: every page faults again
    assert all(f > pages // 2 for f in default["faults"][1:])  # type: ignore[index]
    # kept: after the first round the same pages serve every later one
    assert all(f < pages // 20 for f in kept["faults"][1:])  # type: ignore[index]


def test_zero_leaves_malloc_alone() -> None:
    assert keep_freed_memory(0) is False


def test_a_negative_setting_is_one_clear_error() -> None:
    with pytest.raises(SettingsError, match=r"\[agent\] malloc_keep_mb: must be >= 0, got -1"):
        load_config(None, agent_malloc_keep_mb=-1)
