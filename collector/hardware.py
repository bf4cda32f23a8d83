"""Hardware findings from GPU samples, GPU events and host samples.

XID errors and double-bit ECC events are alerts the moment the agent reports
them (it waits on NVML's event set, not the next sample). An increase of the
uncorrectable ECC count between two samples is one too. Thermal or power
throttling is an alert only once held for `throttle_hold_s`, since brief
power capping is normal under load; so is a GPU that a training run holds but
that sits under `idle_util` percent for `idle_hold_s` (a hung data loader, a
deadlocked collective). A node that reported samples and then goes quiet for
`silent_s` is found by `silent`, called on the collector's clock.

A GpuSamples message (many samples) is judged one sample at a time in time
order, exactly as if each had come as a GpuSample (findings at the sample's
time); only the few columns the detectors read are unpacked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from collector.detectors import Finding
from collector.gpu_rows import column
from schemas.gpu_packed import INT_NULL, unpacked

__all__ = ["THROTTLE_MASK", "HardwareConfig", "HardwareWatch"]

# nvmlClocksEventReason*: SwPowerCap 0x4, HwSlowdown 0x8, SwThermalSlowdown 0x20,
# HwThermalSlowdown 0x40, HwPowerBrakeSlowdown 0x80 (not GpuIdle, app clocks, sync boost).
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
_CRITICAL_EVENTS = {"xid": "XID error", "ecc_double_bit": "double-bit ECC error"}

Hit = tuple[str | None, Finding, str, int]  # (run_id, finding, severity, time_us)
_NOBODY: list[str | None] = [None]  # the run of a finding on a GPU no run holds
_SCAN_FROM = 32  # samples in a message from which `_calm` pays off over the loop's test


@dataclass(frozen=True)
class HardwareConfig:
    throttle_hold_s: float = 60.0
    idle_util: int = 5
    idle_hold_s: float = 120.0
    silent_s: float = 120.0


@dataclass
class _Hold:
    """A condition that counts once it has held `hold_s`."""

    since: int | None = None  # time_us it became active
    open: bool = False

    def update(self, active: bool, t: int, hold_s: float) -> str | None:
        """'firing' when it has held `hold_s`, 'resolved' when it ends after that."""
        if not active:
            self.since = None
            if self.open:
                self.open = False
                return "resolved"
            return None
        if self.since is None:
            self.since = t
        if not self.open and t - self.since >= hold_s * 1e6:
            self.open = True
            return "firing"
        return None


@dataclass
class _Gpu:
    ecc_uncorrected: int | None = None
    throttle: _Hold = field(default_factory=_Hold)
    idle: _Hold = field(default_factory=_Hold)

    def calm(self) -> bool:
        """No condition pending or open: an inactive reading changes nothing."""
        t, i = self.throttle, self.idle
        return t.since is None and i.since is None and not t.open and not i.open


@dataclass
class HardwareWatch:
    config: HardwareConfig = field(default_factory=HardwareConfig)
    _gpus: dict[str, _Gpu] = field(default_factory=dict)
    _last_seen: dict[str, int] = field(default_factory=dict)  # node -> time_us
    _silent: set[str] = field(default_factory=set)

    def observe(self, name: str, r: dict[str, Any], arrived_us: int | None = None) -> list[Hit]:
        """Findings of one GPU/host message; `arrived_us` (default: its event
        time) is when it was seen, what node silence is measured from."""
        env = r["envelope"]
        node, t = env["node"], int(env["time_us"])
        if name == "GpuSamples":
            return self._samples(node, t, r, arrived_us)
        out = self._heard(node, t if arrived_us is None else arrived_us, t)
        if name == "GpuEvent":
            out += self._event(r, t)
        elif name == "GpuSample":
            procs = r["processes"]
            runs = sorted({p["run_id"] for p in procs if p.get("run_id")}) if procs else []
            out += self._sample(
                r["gpu_uuid"], r["index"], runs, r["ecc_uncorrected"], r["throttle_reasons"],
                r["utilization_gpu"], t,
            )  # fmt: skip
        return out

    def _samples(self, node: str, t: int, r: dict[str, Any], arrived_us: int | None) -> list[Hit]:
        """A routed (so checked) GpuSamples message, sample by sample in time order."""
        n = r["count"]
        when = _values(r["time_us"], "q")
        order: Sequence[int] = range(n)
        if when != sorted(when):  # a tick's samples share one time: usually in order
            order = sorted(order, key=when.__getitem__)  # stable: ties keep message order
        first = when[order[0]] if n else t
        out = self._heard(node, first if arrived_us is None else arrived_us, first)
        if n == 0:
            return out
        if arrived_us is None:  # each sample heard at its time, as GpuSample messages are
            self._last_seen[node] = max(self._last_seen[node], max(when))
        if n >= _SCAN_FROM and self._calm(r):
            return out
        ecc, reasons, util = (
            _values(r[key], "q")
            for key in ("ecc_uncorrected", "throttle_reasons", "utilization_gpu")
        )
        names = r["runs"]
        run = _values(r["process_run"], "i") if names else []
        ends = list(itertools.accumulate(_values(r["process_count"], "i"))) if names else []
        devices = [(d["gpu_uuid"], d["index"]) for d in r["devices"]]
        device = _values(r["device"], "i")
        gpus, idle = self._gpus, self.config.idle_util
        for i in order:
            uuid, index = devices[device[i]]
            gpu, e, why, u = gpus.get(uuid), ecc[i], reasons[i], util[i]
            if (  # nothing to find and nothing to change: the usual sample, skipped cheaply
                gpu is not None
                and gpu.calm()
                and (e == INT_NULL or e == gpu.ecc_uncorrected)
                and not why & THROTTLE_MASK  # INT_NULL has no low bits
                and (u == INT_NULL or u >= idle)
            ):
                continue
            runs = []
            if names:
                start, end = ends[i - 1] if i else 0, ends[i]
                runs = sorted({names[k] for k in run[start:end] if k >= 0 and names[k]})
            out += self._sample(
                uuid, index, runs, None if e == INT_NULL else e,
                None if why == INT_NULL else why, None if u == INT_NULL else u, when[i],
            )  # fmt: skip
        return out

    def _calm(self, r: dict[str, Any]) -> bool:
        """True when no sample of the message can find or change anything: every
        GPU known and calm, no throttling, no low utilization, no new ECC count.
        The loop's per-sample test over all samples at once, for messages of
        many ticks (a few numpy calls instead of a Python step per sample)."""
        gpus = [self._gpus.get(d["gpu_uuid"]) for d in r["devices"]]
        if not all(gpu is not None and gpu.calm() for gpu in gpus):
            return False
        if np.count_nonzero(column(r["throttle_reasons"], "<i8") & THROTTLE_MASK):
            return False  # INT_NULL has no low bits
        util = column(r["utilization_gpu"], "<i8")
        if np.count_nonzero((util != INT_NULL) & (util < self.config.idle_util)):
            return False
        known = [INT_NULL if g is None or g.ecc_uncorrected is None else g.ecc_uncorrected
                 for g in gpus]  # fmt: skip
        last = np.array(known, dtype=np.int64)[column(r["device"], "<i4")]
        ecc = column(r["ecc_uncorrected"], "<i8")
        return not np.count_nonzero((ecc != INT_NULL) & (ecc != last))

    def silent(self, now_us: int) -> list[tuple[str, Finding]]:
        out = []
        limit = int(self.config.silent_s * 1e6)
        for node, last in self._last_seen.items():
            if node not in self._silent and now_us - last > limit:
                self._silent.add(node)
                quiet = (now_us - last) / 1e6
                out.append(
                    (
                        node,
                        self._finding(
                            "node_silent",
                            "firing",
                            math.nan,
                            f"node {node} has sent no samples for {quiet:.0f} s",
                        ),
                    )
                )
        return out

    def _heard(self, node: str, seen_us: int, time_us: int) -> list[Hit]:
        """Count `node` as heard at `seen_us`; the end of its silence (an alert at
        `time_us`, the message's) if it was silent."""
        self._last_seen[node] = max(seen_us, self._last_seen.get(node, seen_us))
        if node not in self._silent:
            return []
        self._silent.discard(node)
        return [
            (
                None,
                self._finding("node_silent", "resolved", math.nan, f"node {node} reporting again"),
                "info",
                time_us,
            )
        ]

    def _event(self, r: dict[str, Any], t: int) -> list[Hit]:
        what = _CRITICAL_EVENTS.get(r["kind"])
        if what is None:
            return []
        code = r["code"]
        message = (
            f"{what}{'' if code is None else f' {code}'} on GPU {r['index']} ({r['gpu_uuid']})"
            + (f", runs {', '.join(r['run_ids'])}" if r["run_ids"] else "")
        )
        value = math.nan if code is None else float(code)
        finding = self._finding(r["kind"], "firing", value, message, gpu=r["gpu_uuid"])
        return [(run, finding, "critical", t) for run in (r["run_ids"] or [None])]

    def _sample(
        self,
        uuid: str,
        index: int,
        runs: list[str],
        ecc: int | None,
        reasons: int | None,
        util: int | None,
        t: int,
    ) -> list[Hit]:
        """One GPU reading; messages are formatted only for a finding (most
        samples have none)."""
        gpu = self._gpus.get(uuid)
        if gpu is None:
            gpu = self._gpus[uuid] = _Gpu()
        out: list[Hit] = []
        if ecc is not None:
            last = gpu.ecc_uncorrected
            if last is not None and ecc > last:
                f = self._finding(
                    "ecc_uncorrectable",
                    "firing",
                    float(ecc),
                    f"uncorrectable ECC errors on GPU {index} ({uuid}): {last} -> {ecc}",
                    baseline=float(last),
                    gpu=uuid,
                )
                out += [(run, f, "critical", t) for run in (runs or _NOBODY)]
            gpu.ecc_uncorrected = ecc
        cfg = self.config
        if reasons is not None:
            state = gpu.throttle.update(bool(reasons & THROTTLE_MASK), t, cfg.throttle_hold_s)
            if state is not None:
                where = f"GPU {index} ({uuid})"
                text = (
                    f"{where} throttled (reasons {reasons:#x}) for {cfg.throttle_hold_s:.0f} s"
                    if state == "firing"
                    else f"{where} no longer throttled"
                )
                out += self._held("throttle", state, float(reasons), text, uuid, runs, t)
        if util is not None:
            active = bool(runs) and util < cfg.idle_util
            state = gpu.idle.update(active, t, cfg.idle_hold_s)
            if state is not None:
                where = f"GPU {index} ({uuid})"
                text = (
                    f"{where} at {util} % while run {', '.join(runs)} trains, for "
                    f"{cfg.idle_hold_s:.0f} s"
                    if state == "firing"
                    else f"{where} busy again ({util} %)"
                )
                out += self._held("gpu_idle", state, float(util), text, uuid, runs, t)
        return out

    def _held(
        self, detector: str, state: str, value: float, text: str, uuid: str, runs: list[str], t: int
    ) -> list[Hit]:
        f = self._finding(detector, state, value, text, gpu=uuid)
        severity = "warning" if state == "firing" else "info"
        return [(run, f, severity, t) for run in (runs or _NOBODY)]

    def _finding(
        self,
        detector: str,
        state: str,
        value: float,
        message: str,
        baseline: float = math.nan,
        gpu: str | None = None,
    ) -> Finding:
        params: dict[str, Any] = asdict(self.config)
        if gpu is not None:
            params["gpu_uuid"] = gpu
        return Finding(detector, state, -1, value, baseline, message, params)


def _values(raw: bytes, code: str) -> list[Any]:
    """A packed little-endian column as Python numbers: for a message's few
    values the stdlib's array is cheaper than a numpy call."""
    return unpacked(code, raw).tolist()
