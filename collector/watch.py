"""Decoded events → detectors → alerts: the collector's real-time watch.

The pipeline hands every decoded message here as soon as it is routed, before
the batch is inserted, so an alert leaves within the consume interval rather
than after the insert. Each alert is an `Alert` event whose identity is
derived from what it says (run, metric, detector, state, step): raised again
after a crash or on a replay, it carries the same event_id, so the alerts
table (a ReplacingMergeTree on event_id) and anyone reading the alerts topic
can drop the repeat. Its envelope stream is `alert/<event_id>`, seq 0: a
derived event is a stream of its own, not a link in an observed one.

Which metrics get the spike and divergence detectors is configured by glob
(`[alerts] metrics`); every metric is checked for NaN/Inf, vectorized per
message, so watching costs Python work only for the watched series.
Cooldown: after an episode resolves, the same (run, metric, detector) does
not fire again until `cooldown_s` of event time has passed. Event time, not
the wall clock, so a replay (`traintrail alerts test`) raises what the live
watch raised.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog

from collector.config import CollectorConfig
from collector.detectors import (
    GRAD_SPIKE,
    DivergenceConfig,
    Finding,
    LrJumpConfig,
    LrJumpDetector,
    SeriesDetector,
    SpikeConfig,
    StallConfig,
    StallDetector,
    is_grad_norm,
    nonfinite_finding,
    spike_config_for,
)
from collector.hardware import HardwareConfig, HardwareWatch
from collector.router import metric_columns
from schemas import Decoded

__all__ = ["AlertRules", "Watcher", "alert_event", "rules_from_config"]

log = structlog.get_logger("traintrail.watch")

_NAMESPACE = uuid.UUID("6f1d3c2e-7a4b-4d1e-9c55-2b7f0e3a9d10")
_SEVERITY = {
    "nonfinite": "critical",
    "divergence": "critical",
    "spike": "warning",
    "stall": "warning",
    "lr_jump": "warning",
}
_SERIES_DETECTORS = frozenset({"spike", "nonfinite", "divergence", "lr_jump"})
_MAX_SERIES = 100_000  # (run, metric) detectors kept; the least recently fed go first
_HARDWARE = frozenset({"GpuSample", "GpuSamples", "GpuEvent", "HostSample"})


def _globs(setting: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in setting.split(",") if p.strip())


# The glob defaults are the settings' own (one list each, in collector/config.py).
_DEFAULTS = CollectorConfig()


@dataclass(frozen=True)
class AlertRules:
    metrics: tuple[str, ...] = _globs(_DEFAULTS.alerts_metrics)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    grad_spike: SpikeConfig = GRAD_SPIKE
    divergence: DivergenceConfig | None = field(default_factory=DivergenceConfig)
    stall: StallConfig = field(default_factory=StallConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    cooldown_s: float = 300.0
    lr_metrics: tuple[str, ...] = _globs(_DEFAULTS.alerts_lr_metrics)
    lr_jump: LrJumpConfig = field(default_factory=LrJumpConfig)

    def watched(self, metric: str) -> bool:
        return _matches(metric, self.metrics)

    def learning_rate(self, metric: str) -> bool:
        """A learning rate, watched for jumps (`metrics` takes precedence)."""
        return _matches(metric, self.lr_metrics)

    def spike_for(self, metric: str) -> SpikeConfig:
        return spike_config_for(metric, self.spike, self.grad_spike)


def rules_from_config(config: Any) -> AlertRules:
    """The `[alerts]` settings of a CollectorConfig as rules."""
    spike = SpikeConfig(
        window=config.alerts_spike_window,
        warmup=config.alerts_spike_warmup,
        z=config.alerts_spike_z,
        min_rel=config.alerts_spike_min_rel,
        min_abs=config.alerts_spike_min_abs,
        tail_factor=config.alerts_spike_tail_factor,
    )
    return AlertRules(
        metrics=_globs(config.alerts_metrics),
        spike=spike,
        grad_spike=replace(  # the same window and warm-up; no absolute floor
            spike,
            z=config.alerts_grad_z,
            min_rel=config.alerts_grad_min_rel,
            min_abs=0.0,
            tail_factor=config.alerts_grad_tail_factor,
        ),
        divergence=(
            DivergenceConfig(window=config.alerts_divergence_window)
            if config.alerts_divergence
            else None
        ),
        stall=StallConfig(factor=config.alerts_stall_factor, min_s=config.alerts_stall_min_s),
        hardware=HardwareConfig(
            throttle_hold_s=config.alerts_throttle_hold_s,
            idle_hold_s=config.alerts_idle_hold_s,
            silent_s=config.alerts_node_silent_s,
        ),
        cooldown_s=config.alerts_cooldown_s,
        lr_metrics=_globs(config.alerts_lr_metrics),
        lr_jump=LrJumpConfig(
            window=config.alerts_spike_window, factor=config.alerts_lr_jump_factor
        ),
    )


def _matches(metric: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(metric, p) for p in globs)


def alert_event(
    run_id: str | None,
    node: str,
    metric: str | None,
    finding: Finding,
    time_us: int,
    severity: str | None = None,
) -> dict[str, Any]:
    """An Alert record (body and envelope) with its derived identity."""
    step = finding.step if finding.step >= 0 else None
    gpu = finding.params.get("gpu_uuid", "")
    key = f"{run_id}/{node}/{gpu}/{metric}/{finding.detector}/{finding.state}/{step}"
    if step is None:
        key += f"/{time_us}"
    event_id = str(uuid.uuid5(_NAMESPACE, key))
    state = finding.state
    return {
        "run_id": run_id,
        "detector": finding.detector,
        "metric": metric,
        "step": step,
        "value": None if math.isnan(finding.value) else finding.value,
        "baseline": None if math.isnan(finding.baseline) else finding.baseline,
        "severity": "info" if state == "resolved" else (severity or _SEVERITY[finding.detector]),
        "state": state,
        "message": finding.message,
        "params": {k: str(v) for k, v in finding.params.items()},
        "envelope": {
            "event_id": event_id,
            "time_us": time_us,
            "node": node,
            "stream": f"alert/{event_id}",
            "seq": 0,
            "prev_hash": b"",
        },
    }


@dataclass
class _Series:
    # None: an unwatched metric, NaN/Inf check only
    detector: SeriesDetector | LrJumpDetector | None
    nonfinite_open: bool = False  # an unwatched metric's NaN/Inf episode (else the detector's)
    quiet_until: dict[str, int] = field(default_factory=dict)  # detector -> time_us
    muted: set[str] = field(default_factory=set)  # detectors whose episode is muted


History = Callable[
    [str, int], tuple[dict[str, tuple[list[int], list[float], int]], list[dict[str, Any]]]
]


class Watcher:
    """Per-run and per-metric detector state, bounded by `_MAX_SERIES`.

    `history(run_id, before_step)` (the store's `watch_history`) is asked the
    first time this process sees a run: the detectors are fed the run's recent
    points without raising anything, and episodes the alerts table shows open
    stay open. So a collector restarted, or handed a run's partition by a
    rebalance, in the middle of an episode neither raises it again nor loses
    the baseline it needs to see the next one."""

    def __init__(
        self,
        rules: AlertRules | None = None,
        history: History | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.rules = rules or AlertRules()
        self.history = history
        # Wall clock (s) for stalls and silent nodes: silence counts from when data
        # arrived, not from its event time, which lags in a backlog. None: event
        # time stands in (a replay, `traintrail alerts test`).
        self.clock = clock
        self._known_runs: set[str] = set()
        self._series: OrderedDict[tuple[str, str], _Series] = OrderedDict()
        self._stalls: dict[str, StallDetector] = {}
        self._nodes: dict[str, str] = {}  # run -> node it reports from
        self.hardware = HardwareWatch(self.rules.hardware)

    # -- input -----------------------------------------------------------------------

    def observe(self, decoded: Decoded) -> list[dict[str, Any]]:
        """Alerts (Alert records) that this message raises or resolves."""
        name, r = decoded.writer.name, decoded.record
        env = r["envelope"]
        if name == "Metrics":
            return self._metrics(r, env["node"])
        if name == "RunStarted":
            self._nodes[r["run_id"]] = env["node"]
            return []
        if name == "RunFinished":
            self._stalls.pop(r["run_id"], None)
            return []
        if name in _HARDWARE:
            return [
                alert_event(run, env["node"], None, f, t, sev)
                for run, f, sev, t in self.hardware.observe(name, r, self._arrived_us())
            ]
        return []

    def tick(self, now_us: int) -> list[dict[str, Any]]:
        """Time-driven findings: stalled runs and silent nodes."""
        out = []
        for run_id, stall in list(self._stalls.items()):
            for f in stall.check(now_us / 1e6):
                out.append(alert_event(run_id, self._nodes.get(run_id, ""), None, f, now_us))
        for node, f in self.hardware.silent(now_us):
            out.append(alert_event(None, node, None, f, now_us, "warning"))
        return out

    def _arrived_us(self) -> int | None:
        return None if self.clock is None else int(self.clock() * 1e6)

    def prime(self, run_id: str, metric: str, steps: list[int], values: list[float]) -> None:
        """Feed history without raising anything: rebuilding state after a restart."""
        series = self._get(run_id, metric)
        if series.detector is not None:
            for step, value in zip(steps, values, strict=True):
                series.detector.update(step, value)
        elif values:
            series.nonfinite_open = not math.isfinite(values[-1])

    def _rebuild(self, run_id: str, before_step: int) -> None:
        if self.history is None:
            return
        window = max(self.rules.spike.window, self.rules.grad_spike.window)
        if self.rules.divergence is not None:
            window = max(window, self.rules.divergence.window)
        try:
            series, episodes = self.history(run_id, before_step)
        except Exception as exc:  # the store down: start fresh rather than stop ingesting
            log.warning("detector state not rebuilt", run_id=run_id, error=str(exc))
            return
        block = self.rules.divergence.window // 4 if self.rules.divergence is not None else 1
        for metric, (steps, values, total) in series.items():
            # As many points as the window, less the few that put the divergence
            # blocks where the uninterrupted watch had them (its count mod block).
            keep = min(len(steps), window - (window - total) % max(1, block))
            self.prime(run_id, metric, steps[len(steps) - keep :], values[len(values) - keep :])
        for row in episodes:
            metric = row["metric"] or ""
            if not metric or row["detector"] not in _SERIES_DETECTORS:
                continue  # hardware and stall episodes are judged afresh
            if row["last_state"] == "firing":
                self.reopen(run_id, metric, row["detector"])
            elif row["last_resolved"] is not None:
                when = row["last_resolved"]
                if when.tzinfo is None:  # DateTime64(6, 'UTC') read back naive
                    when = when.replace(tzinfo=dt.UTC)
                resolved_us = int(when.timestamp() * 1e6)
                self._get(run_id, metric).quiet_until[row["detector"]] = resolved_us + int(
                    self.rules.cooldown_s * 1e6
                )

    def reopen(self, run_id: str, metric: str, detector: str) -> None:
        """An episode the alerts table shows firing and unresolved: continue it."""
        series = self._get(run_id, metric)
        if series.detector is not None:
            series.detector.reopen(detector)
        elif detector == "nonfinite":
            series.nonfinite_open = True

    # -- metrics ---------------------------------------------------------------------

    def _metrics(self, r: dict[str, Any], node: str) -> list[dict[str, Any]]:
        return self.observe_points(r["run_id"], node, r["names"], *metric_columns(r))

    def observe_points(
        self,
        run_id: str,
        node: str,
        names: list[str],
        step: np.ndarray,
        time_us: np.ndarray,
        idx: np.ndarray,
        value: np.ndarray,
    ) -> list[dict[str, Any]]:
        """One message's points (columns as in Metrics); also the replay entry."""
        if len(step) == 0:
            return []
        self._nodes[run_id] = node
        if run_id not in self._known_runs:
            self._known_runs.add(run_id)
            self._rebuild(run_id, int(step.min()))
        stall = self._stalls.get(run_id)
        if stall is None:
            stall = self._stalls[run_id] = StallDetector(run_id, self.rules.stall)
        out = []
        arrived = self._arrived_us()
        for f in stall.observe(
            int(step.max()),
            float(time_us.max()) / 1e6,
            None if arrived is None else arrived / 1e6,
        ):
            out.append(alert_event(run_id, node, None, f, int(time_us.max())))
        finite = np.isfinite(value)
        for k in np.unique(idx):
            metric = names[int(k)] if 0 <= k < len(names) else f"#{k}"
            series = self._get(run_id, metric)
            mine = idx == k
            if series.detector is None:
                out += self._nonfinite_only(
                    run_id, node, metric, series, step, time_us, value, finite, mine
                )
                continue
            for s, t, v in zip(
                step[mine].tolist(), time_us[mine].tolist(), value[mine].tolist(), strict=True
            ):
                for f in series.detector.update(s, v):
                    if self._allowed(series, f, t):
                        out.append(alert_event(run_id, node, metric, f, t))
        return out

    def _nonfinite_only(
        self,
        run_id: str,
        node: str,
        metric: str,
        series: _Series,
        step: np.ndarray,
        time_us: np.ndarray,
        value: np.ndarray,
        finite: np.ndarray,
        mine: np.ndarray,
    ) -> list[dict[str, Any]]:
        """NaN/Inf episodes of an unwatched metric, found at their edges only."""
        where = np.flatnonzero(mine)
        bad = ~finite[where]
        before = np.concatenate(([series.nonfinite_open], bad[:-1]))
        out = []
        for i in np.flatnonzero(bad != before).tolist():
            j = int(where[i])
            s, v = int(step[j]), float(value[j])
            f = nonfinite_finding(metric, "firing" if bad[i] else "resolved", s, v)
            if self._allowed(series, f, int(time_us[j])):
                out.append(alert_event(run_id, node, metric, f, int(time_us[j])))
        series.nonfinite_open = bool(bad[-1])
        return out

    def _allowed(self, series: _Series, f: Finding, time_us: int) -> bool:
        """Cooldown: an episode starting within `cooldown_s` of the last reported
        resolve of the same detector is muted, its resolve too."""
        if f.state == "firing":
            if time_us < series.quiet_until.get(f.detector, -1):
                series.muted.add(f.detector)
                return False
            return True
        if f.detector in series.muted:
            series.muted.discard(f.detector)
            return False
        series.quiet_until[f.detector] = time_us + int(self.rules.cooldown_s * 1e6)
        return True

    def _get(self, run_id: str, metric: str) -> _Series:
        key = (run_id, metric)
        series = self._series.get(key)
        if series is None:
            detector: SeriesDetector | LrJumpDetector | None = None
            if self.rules.watched(metric):
                divergence = None if is_grad_norm(metric) else self.rules.divergence
                detector = SeriesDetector(metric, self.rules.spike_for(metric), divergence)
            elif self.rules.learning_rate(metric):
                detector = LrJumpDetector(metric, self.rules.lr_jump)
            series = self._series[key] = _Series(detector)
            if len(self._series) > _MAX_SERIES:
                self._series.popitem(last=False)
        else:
            self._series.move_to_end(key)
        return series
