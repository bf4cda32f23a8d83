"""Hardware findings from GPU samples, GPU events and host samples.

XID errors and double-bit ECC events are alerts the moment the agent reports
them (it waits on NVML's event set, not the next sample). An increase of the
uncorrectable ECC count between two samples is one too. Thermal or power
throttling is an alert only once held for `throttle_hold_s`, since brief
power capping is normal under load; so is a GPU that a training run holds but
that sits under `idle_util` percent for `idle_hold_s` (a hung data loader, a
deadlocked collective). A node that reported samples and then goes quiet for
`silent_s` is found by `silent`, called on the collector's clock.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from collector.detectors import Finding

__all__ = ["THROTTLE_MASK", "HardwareConfig", "HardwareWatch"]

# nvmlClocksEventReason*: SwPowerCap 0x4, HwSlowdown 0x8, SwThermalSlowdown 0x20,
# HwThermalSlowdown 0x40, HwPowerBrakeSlowdown 0x80 (not GpuIdle, app clocks, sync boost).
THROTTLE_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
_CRITICAL_EVENTS = {"xid": "XID error", "ecc_double_bit": "double-bit ECC error"}

Hit = tuple[str | None, Finding, str]  # (run_id, finding, severity)


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
    holds: dict[str, _Hold] = field(default_factory=dict)  # detector -> its condition


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
        out = self._heard(node, t if arrived_us is None else arrived_us)
        if name == "GpuEvent":
            out += self._event(r)
        elif name == "GpuSample":
            out += self._sample(r, t)
        return out

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

    def _heard(self, node: str, t: int) -> list[Hit]:
        self._last_seen[node] = max(t, self._last_seen.get(node, t))
        if node not in self._silent:
            return []
        self._silent.discard(node)
        return [
            (
                None,
                self._finding("node_silent", "resolved", math.nan, f"node {node} reporting again"),
                "info",
            )
        ]

    def _event(self, r: dict[str, Any]) -> list[Hit]:
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
        return [(run, finding, "critical") for run in (r["run_ids"] or [None])]

    def _sample(self, r: dict[str, Any], t: int) -> list[Hit]:
        gpu = self._gpus.setdefault(r["gpu_uuid"], _Gpu())
        runs = sorted({p["run_id"] for p in r["processes"] if p.get("run_id")})
        where = f"GPU {r['index']} ({r['gpu_uuid']})"
        out: list[Hit] = []
        ecc = r["ecc_uncorrected"]
        if ecc is not None:
            if gpu.ecc_uncorrected is not None and ecc > gpu.ecc_uncorrected:
                f = self._finding(
                    "ecc_uncorrectable",
                    "firing",
                    float(ecc),
                    f"uncorrectable ECC errors on {where}: {gpu.ecc_uncorrected} -> {ecc}",
                    baseline=float(gpu.ecc_uncorrected),
                    gpu=r["gpu_uuid"],
                )
                out += [(run, f, "critical") for run in (runs or [None])]
            gpu.ecc_uncorrected = ecc
        cfg, reasons, util = self.config, r["throttle_reasons"], r["utilization_gpu"]
        held_for: list[tuple[str, bool, float, float, str, str]] = []  # conditions with a hold
        if reasons is not None:
            held_for.append(
                ("throttle", bool(reasons & THROTTLE_MASK), cfg.throttle_hold_s, float(reasons),
                 f"{where} throttled (reasons {reasons:#x}) for {cfg.throttle_hold_s:.0f} s",
                 f"{where} no longer throttled")
            )  # fmt: skip
        if util is not None:
            held_for.append(
                ("gpu_idle", bool(runs) and util < cfg.idle_util, cfg.idle_hold_s, float(util),
                 f"{where} at {util} % while run {', '.join(runs)} trains, for "
                 f"{cfg.idle_hold_s:.0f} s",
                 f"{where} busy again ({util} %)")
            )  # fmt: skip
        for detector, active, hold_s, value, firing, resolved in held_for:
            state = gpu.holds.setdefault(detector, _Hold()).update(active, t, hold_s)
            if state is not None:
                text = firing if state == "firing" else resolved
                f = self._finding(detector, state, value, text, gpu=r["gpu_uuid"])
                severity = "warning" if state == "firing" else "info"
                out += [(run, f, severity) for run in (runs or [None])]
        return out

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
