"""Streaming detectors over one metric series: spikes, non-finite values, divergence.

The detection logic alone, as plain objects fed one point at a time, with
state bounded by a window; collector/watch.py feeds them from the stream and
turns their findings into alerts.

A loss spike is judged against a robust baseline of the last `window` finite
points, kept sorted so its quantiles cost a lookup: the median, the spread
(interquartile range scaled to a standard deviation) and a high quantile
(`tail_q`). One earlier spike or a noisy mini-batch does not move them the
way a mean and standard deviation would. A point is a spike when it is above
all of: the median plus `z` spreads, the median plus `min_rel` of it, the
median plus `min_abs`, and the median plus `tail_factor` times the high
quantile's distance from the median. The last one is what keeps heavy-tailed
mini-batch noise quiet: when a few hard examples make one batch in fifty cost
ten times the median (a near-solved classification task does this), such
batches are in the window's tail already, and only a jump well past them is
news; with light-tailed noise it is no stricter than the spread rule. Nothing
is judged during `warmup` points. One finding opens an episode; the next point back under the
threshold closes it (a `resolved` finding), so a spike lasting 50 steps is
one alert.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "GRAD_SPIKE",
    "DivergenceConfig",
    "Finding",
    "LrJumpConfig",
    "LrJumpDetector",
    "SeriesDetector",
    "SpikeConfig",
    "StallConfig",
    "StallDetector",
    "is_grad_norm",
    "nonfinite_finding",
    "spike_config_for",
]

_IQR_SCALE = 1.349  # interquartile range of normal noise, in standard deviations


@dataclass(frozen=True)
class SpikeConfig:
    window: int = 256
    warmup: int = 32
    z: float = 8.0
    min_rel: float = 0.5
    min_abs: float = 0.0
    tail_q: float = 0.99
    tail_factor: float = 4.0


# Gradient norms are heavier-tailed than losses: the same mechanism, wider bounds.
GRAD_SPIKE = SpikeConfig(z=10.0, min_rel=2.0, tail_factor=6.0)


def is_grad_norm(metric: str) -> bool:
    """A gradient norm (a name containing "grad"): spikes with wider bounds, and
    no divergence (a rising gradient norm is not a rising loss)."""
    return "grad" in metric.lower()


def spike_config_for(
    metric: str, default: SpikeConfig | None = None, grad: SpikeConfig = GRAD_SPIKE
) -> SpikeConfig:
    """Gradient-norm metrics get `grad`, the others `default`."""
    return grad if is_grad_norm(metric) else (default or SpikeConfig())


@dataclass(frozen=True)
class StallConfig:
    """A run stalls when no step arrives for `factor` times its usual step interval
    (an EWMA of the gaps) and at least `min_s` seconds."""

    factor: float = 10.0
    min_s: float = 60.0


@dataclass(frozen=True)
class DivergenceConfig:
    """A sustained rise: the median of the latest `window // 4` points exceeds the
    lowest median seen over earlier such blocks by `min_rel` of it and by `noise`
    times the block's own spread, for `blocks` blocks in a row. (The spread
    keeps a curve that merely wanders at a tiny level, where doubling is noise,
    from counting as a rise.)"""

    window: int = 200
    min_rel: float = 1.0
    blocks: int = 3
    noise: float = 2.0


@dataclass(frozen=True)
class LrJumpConfig:
    """A learning rate jumps when a value exceeds `factor` times the largest of
    the `window` values before it. Schedules warm up, decay, step down and
    cycle gradually; several times up in one step is a scheduler bug, a resume
    with the wrong optimizer or scheduler state, or a manual change, each worth
    a record. (A warm-restart schedule jumps by design every cycle: leave its
    learning rate out of `[alerts] lr_metrics` there.)"""

    window: int = 256
    factor: float = 3.0


@dataclass(frozen=True)
class Finding:
    detector: str  # "spike", "nonfinite", "divergence", "lr_jump"
    state: str  # "firing" or "resolved"
    step: int
    value: float
    baseline: float
    message: str
    params: dict[str, Any] = field(default_factory=dict)


def nonfinite_finding(
    metric: str, state: str, step: int, value: float, params: dict[str, Any] | None = None
) -> Finding:
    """A NaN/Inf episode's start (the value) or end (the first finite value)."""
    message = (
        f"{metric} is {value} at step {step}"
        if state == "firing"
        else f"{metric} finite again at step {step}"
    )
    return Finding("nonfinite", state, step, value, math.nan, message, params or {})


def _nonfinite_edge(
    out: list[Finding], open_: set[str], metric: str, step: int, value: float, config: Any
) -> bool:
    """Append the start or end of a NaN/Inf episode at this point (tracked in
    `open_`) to `out`; True when `value` is finite, so the caller judges it.
    `config`, a detector's dataclass, becomes the finding's params only when
    there is a finding (asdict costs tens of µs)."""
    finite = math.isfinite(value)
    if finite == ("nonfinite" in open_):  # an episode starts (NaN) or ends (finite)
        if finite:
            open_.discard("nonfinite")
        else:
            open_.add("nonfinite")
        state = "resolved" if finite else "firing"
        out.append(nonfinite_finding(metric, state, step, value, asdict(config)))
    return finite


def _quantile(ordered: list[float], q: float) -> float:
    """The `q` quantile of sorted values, nearest rank."""
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class SeriesDetector:
    """Detectors for one (run, metric) series; `update` returns what changed."""

    def __init__(
        self,
        metric: str,
        spike: SpikeConfig | None = None,
        divergence: DivergenceConfig | None = None,
    ) -> None:
        self.metric = metric
        self.spike = spike or SpikeConfig()
        self.divergence = divergence
        self._recent: deque[float] = deque()  # arrival order, for eviction
        self._sorted: list[float] = []  # the same values, sorted
        self._seen = 0
        self._open: set[str] = set()
        self._block: list[float] = []
        self._best_block: float = math.inf
        self._rising = 0
        # The per-point path reads these instead of the configs (hot: every
        # point of every watched series).
        # At least one value: with `warmup` 0 the first point has no baseline.
        self._judged_from = max(1, min(self.spike.window, self.spike.warmup))
        self._quantiles: tuple[int, int, int, int, int] = (-1, 0, 0, 0, 0)
        self._block_size = max(1, divergence.window // 4) if divergence else 0

    def reopen(self, detector: str) -> None:
        """Continue an episode raised before a restart (its resolve still comes)."""
        self._open.add(detector)

    def update(self, step: int, value: float) -> list[Finding]:
        out: list[Finding] = []
        if not _nonfinite_edge(out, self._open, self.metric, step, value, self.spike):
            return out
        self._spike(step, value, out)
        if self.divergence is not None:
            self._block.append(value)
            if len(self._block) >= self._block_size:
                out += self._diverge(step, value, self.divergence)
        return out

    def _positions(self, n: int) -> tuple[int, int, int, int, int]:
        """Where the median, quartiles and tail quantile sit in a sorted window
        of `n` values (as `_quantile` finds them), cached per window size."""
        cached = self._quantiles
        if cached[0] != n:
            last = n - 1
            at = [min(last, int(q * last + 0.5)) for q in (0.5, 0.25, 0.75, self.spike.tail_q)]
            cached = self._quantiles = (n, at[0], at[1], at[2], at[3])
        return cached

    def _spike(self, step: int, value: float, out: list[Finding]) -> None:
        """Judge `value`, appending any finding to `out`."""
        cfg = self.spike
        self._seen += 1
        ordered = self._sorted
        if self._seen > cfg.warmup and len(ordered) >= self._judged_from:
            _, i50, i25, i75, itail = self._positions(len(ordered))
            median = ordered[i50]
            # median + the largest margin: the same float as the largest of the
            # sums, since rounding is monotonic.
            threshold = median + max(
                cfg.z * ((ordered[i75] - ordered[i25]) / _IQR_SCALE),
                cfg.min_rel * abs(median),
                cfg.min_abs,
                cfg.tail_factor * (ordered[itail] - median),
            )
            if value > threshold:
                if "spike" not in self._open:
                    self._open.add("spike")
                    out.append(
                        self._finding(
                            "spike",
                            "firing",
                            step,
                            value,
                            median,
                            f"{self.metric} jumped to {value:.4g} at step {step} "
                            f"(recent median {median:.4g}, threshold {threshold:.4g})",
                        )
                    )
                return  # a spike does not enter the baseline
            if self._open and "spike" in self._open:
                self._open.discard("spike")
                out.append(
                    self._finding(
                        "spike",
                        "resolved",
                        step,
                        value,
                        median,
                        f"{self.metric} back to {value:.4g} at step {step}",
                    )
                )
        self._recent.append(value)
        bisect.insort(ordered, value)
        if len(ordered) > cfg.window:
            del ordered[bisect.bisect_left(ordered, self._recent.popleft())]

    def _diverge(self, step: int, value: float, cfg: DivergenceConfig) -> list[Finding]:
        """Judge the block just completed (`_block`, `_block_size` values)."""
        ordered = sorted(self._block)
        block = statistics.median(ordered)
        spread = (_quantile(ordered, 0.75) - _quantile(ordered, 0.25)) / _IQR_SCALE
        self._block = []
        out: list[Finding] = []
        best = self._best_block
        rising = (
            math.isfinite(best)
            and block > best * (1 + cfg.min_rel)
            and block - best > cfg.noise * spread
        )
        self._rising = self._rising + 1 if rising else 0
        if self._rising >= cfg.blocks and "divergence" not in self._open:
            self._open.add("divergence")
            out.append(
                self._finding(
                    "divergence",
                    "firing",
                    step,
                    value,
                    self._best_block,
                    f"{self.metric} has risen for {self._rising} blocks: median {block:.4g} "
                    f"against a best of {self._best_block:.4g}",
                )
            )
        elif not rising and "divergence" in self._open:
            self._open.discard("divergence")
            out.append(
                self._finding(
                    "divergence",
                    "resolved",
                    step,
                    value,
                    self._best_block,
                    f"{self.metric} no longer rising at step {step}",
                )
            )
        self._best_block = min(self._best_block, block)
        return out

    def _finding(
        self, detector: str, state: str, step: int, value: float, baseline: float, message: str
    ) -> Finding:
        config = self.divergence if detector == "divergence" else self.spike
        params = asdict(config) if config is not None else {}
        return Finding(detector, state, step, value, baseline, message, params)


class LrJumpDetector:
    """One learning-rate series (LrJumpConfig); `update` returns what changed.
    A jumped value stays out of the baseline, so a jump that lasts stays one
    open episode, resolved when the rate is back within `factor` of it."""

    def __init__(self, metric: str, config: LrJumpConfig | None = None) -> None:
        self.metric = metric
        self.config = config or LrJumpConfig()
        self._recent: deque[float] = deque(maxlen=max(1, self.config.window))
        self._open: set[str] = set()

    def reopen(self, detector: str) -> None:
        self._open.add(detector)

    def update(self, step: int, value: float) -> list[Finding]:
        out: list[Finding] = []
        if not _nonfinite_edge(out, self._open, self.metric, step, value, self.config):
            return out
        top = max(self._recent, default=0.0)
        if top > 0 and value > self.config.factor * top:
            if "lr_jump" not in self._open:
                self._open.add("lr_jump")
                message = (
                    f"{self.metric} jumped to {value:.4g} at step {step}, "
                    f"{value / top:.3g}x the highest of its last {len(self._recent)} values "
                    f"({top:.4g})"
                )
                finding = Finding(
                    "lr_jump", "firing", step, value, top, message, asdict(self.config)
                )
                out.append(finding)
            return out
        if "lr_jump" in self._open:
            self._open.discard("lr_jump")
            message = f"{self.metric} back to {value:.4g} at step {step}"
            params = asdict(self.config)
            out.append(Finding("lr_jump", "resolved", step, value, top, message, params))
        self._recent.append(value)
        return out


class StallDetector:
    """One run's step cadence; `check(now)` fires once per stall, resolves on a step."""

    def __init__(self, run_id: str, config: StallConfig | None = None) -> None:
        self.run_id = run_id
        self.config = config or StallConfig()
        self._last: tuple[int, float] | None = None  # (step, when it arrived, s)
        self._event_s = 0.0  # event time of the last step
        self._gap: float | None = None  # EWMA of seconds between new steps
        self._stalled = False

    def observe(self, step: int, at_s: float, arrived_s: float | None = None) -> list[Finding]:
        """A step at event time `at_s`, seen at `arrived_s` (default: `at_s`).
        The usual interval is learnt from event times; silence is measured
        from arrivals, so a backlog read long after it was written (a collector
        catching up) is not a stall while its steps keep coming."""
        out: list[Finding] = []
        if self._last is not None and step > self._last[0]:
            # per step: a message may carry many steps since the last one
            gap = max(0.0, at_s - self._event_s) / (step - self._last[0])
            self._gap = gap if self._gap is None else 0.8 * self._gap + 0.2 * gap
        if self._last is None or step > self._last[0]:
            self._last = (step, at_s if arrived_s is None else arrived_s)
            self._event_s = at_s
            if self._stalled:
                self._stalled = False
                out.append(self._finding("resolved", step, f"run {self.run_id} stepping again"))
        return out

    def check(self, now_s: float) -> list[Finding]:
        if self._last is None or self._gap is None or self._stalled:
            return []
        silent = now_s - self._last[1]
        limit = max(self.config.factor * self._gap, self.config.min_s)
        if silent <= limit:
            return []
        self._stalled = True
        return [
            self._finding(
                "firing",
                self._last[0],
                f"run {self.run_id} has not reported a step for {silent:.0f} s "
                f"(usually every {self._gap:.3g} s; last step {self._last[0]})",
            )
        ]

    def _finding(self, state: str, step: int, message: str) -> Finding:
        gap = self._gap if self._gap is not None else math.nan
        return Finding("stall", state, step, math.nan, gap, message, asdict(self.config))
