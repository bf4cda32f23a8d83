"""Which training run a process belongs to, for GPU and host per-process data.

The SDK's RunStarted carries the training process's pid; ranks started by
torchrun/MPI are children of a registered process or register themselves.
A pid not registered is looked up through its parent chain in /proc, so a
dataloader worker's GPU memory is attributed to its run too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RunRegistry"]

_MAX_DEPTH = 16


@dataclass
class RunRegistry:
    proc: Path = Path("/proc")
    _by_pid: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def register(self, pid: int, run_id: str) -> None:
        with self._lock:
            self._by_pid[pid] = run_id

    def finish(self, run_id: str) -> None:
        with self._lock:
            for pid in [p for p, r in self._by_pid.items() if r == run_id]:
                del self._by_pid[pid]

    def pids(self) -> dict[int, str]:
        """Registered pids still alive; the dead are forgotten here, since an
        attached rank (or a killed run) never sends the RunFinished that would."""
        with self._lock:
            for pid in [p for p in self._by_pid if not (self.proc / str(p)).exists()]:
                del self._by_pid[pid]
            return dict(self._by_pid)

    def lookup(self, pid: int) -> str | None:
        """The run of `pid` or of its nearest registered ancestor."""
        with self._lock:
            known = dict(self._by_pid)
        for _ in range(_MAX_DEPTH):
            if pid in known:
                return known[pid]
            parent = self._parent(pid)
            if parent is None or parent <= 1:
                return None
            pid = parent
        return None

    def _parent(self, pid: int) -> int | None:
        try:
            stat = (self.proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        # the command name is in parentheses and may itself contain spaces
        fields = stat[stat.rfind(")") + 2 :].split()
        try:
            return int(fields[1])
        except (IndexError, ValueError):
            return None
