"""Detectors on synthetic loss curves with mini-batch noise, warm-up and injections."""

from __future__ import annotations

import math
import random

from collector.detectors import (
    DivergenceConfig,
    LrJumpConfig,
    LrJumpDetector,
    SeriesDetector,
    SpikeConfig,
    StallConfig,
    StallDetector,
    spike_config_for,
)


def _loss(step: int, rng: random.Random) -> float:
    """A decaying loss with the multiplicative noise of mini-batches (±~15 %)."""
    return (2.3 * math.exp(-step / 400) + 0.05) * rng.lognormvariate(0, 0.15)


def _run(values: list[float], **kw: object) -> list[tuple[str, str, int]]:
    det = SeriesDetector("loss", **kw)  # type: ignore[arg-type]
    return [(f.detector, f.state, f.step) for i, v in enumerate(values) for f in det.update(i, v)]


def test_clean_noisy_curves_raise_nothing() -> None:
    for seed in range(10):  # 10 runs x 10,000 steps of ordinary noise and warm-up
        rng = random.Random(seed)
        assert _run([_loss(i, rng) for i in range(10_000)]) == [], seed


def test_an_injected_spike_is_one_episode() -> None:
    rng = random.Random(1)
    values = [_loss(i, rng) for i in range(2000)]
    for i in range(700, 705):  # a bad stretch: 5 steps at 10x (3x the window's p99 and more)
        values[i] *= 10
    assert _run(values) == [("spike", "firing", 700), ("spike", "resolved", 705)]


def test_no_warmup_judges_from_the_second_point() -> None:
    """`[alerts] spike_warmup = 0` is a valid setting: the first point has no
    baseline to be judged against (it used to index an empty window)."""
    assert _run([1.0, 1.0, 1.0, 50.0, 1.0], spike=SpikeConfig(warmup=0, min_rel=0.5)) == [
        ("spike", "firing", 3),
        ("spike", "resolved", 4),
    ]


def test_nan_and_inf_fire_once_per_episode() -> None:
    rng = random.Random(2)
    values = [_loss(i, rng) for i in range(300)]
    values[200] = math.nan
    values[201] = math.inf
    found = _run(values)
    assert found == [("nonfinite", "firing", 200), ("nonfinite", "resolved", 202)]


def test_a_sustained_rise_is_divergence_not_a_spike_storm() -> None:
    rng = random.Random(3)
    values = [_loss(i, rng) for i in range(1500)]
    values += [values[-1] * (1 + (i / 100)) for i in range(600)]  # climbs steadily
    found = _run(values, divergence=DivergenceConfig(window=200))
    firing = [f for f in found if f[1] == "firing"]
    assert ("divergence", "firing") in {(d, s) for d, s, _ in firing}
    step = next(s for d, st, s in firing if d == "divergence")
    assert 1500 < step < 1800


def test_gradient_norms_use_wider_bounds() -> None:
    rng = random.Random(4)
    norms = [rng.lognormvariate(0, 0.3) for _ in range(3000)]  # ±30 %: no explosion
    assert _run(norms, spike=spike_config_for("grad_norm")) == []
    norms[2000] = 50.0
    assert _run(norms, spike=spike_config_for("grad_norm"))[0] == ("spike", "firing", 2000)


def test_stall_fires_once_after_the_runs_own_cadence_and_resolves() -> None:
    stall = StallDetector("r1", StallConfig(factor=10.0, min_s=5.0))
    for step in range(100):
        assert stall.observe(step, step * 0.5) == []  # a step every 0.5 s
    last = 99 * 0.5
    assert stall.check(last + 4.9) == []  # under min_s
    fired = stall.check(last + 5.1)
    assert [(f.detector, f.state, f.step) for f in fired] == [("stall", "firing", 99)]
    assert stall.check(last + 60) == []  # one alert per stall
    back = stall.observe(100, last + 61)
    assert [(f.detector, f.state) for f in back] == [("stall", "resolved")]
    assert stall.observe(100, last + 62) == []  # a repeated step is not progress


def _schedules(n: int) -> dict[str, list[float]]:
    """Learning-rate schedules as trainers run them: none of them is a jump."""
    warm = 200
    cosine = [
        3e-4 * min(1.0, i / warm) * (0.55 + 0.45 * math.cos(math.pi * max(0, i - warm) / n))
        for i in range(n)
    ]  # linear warm-up from 0 (HF's default), then cosine decay
    steps = [0.1 * 0.3 ** (i // 1500) for i in range(n)]  # step decay
    cycle = [1e-3 + 9e-3 * abs((i % 400) / 200 - 1) for i in range(n)]  # triangular cyclic
    one_cycle = [4e-3 * math.sin(math.pi * i / n) + 1e-5 for i in range(n)]
    return {"warmup+cosine": cosine, "step": steps, "cyclic": cycle, "one-cycle": one_cycle}


def _lr(values: list[float], **kw: object) -> list[tuple[str, str, int]]:
    det = LrJumpDetector("learning_rate", LrJumpConfig(**kw))  # type: ignore[arg-type]
    return [(f.detector, f.state, f.step) for i, v in enumerate(values) for f in det.update(i, v)]


def test_learning_rate_schedules_are_not_jumps() -> None:
    for name, values in _schedules(5000).items():
        assert _lr(values) == [], name


def test_a_learning_rate_jump_fires_once_and_resolves() -> None:
    for name, values in _schedules(5000).items():
        values = list(values)
        for i in range(2500, 2502):  # x40 for two steps
            values[i] *= 40
        assert _lr(values) == [("lr_jump", "firing", 2500), ("lr_jump", "resolved", 2502)], name


def test_a_lasting_jump_is_one_open_episode() -> None:
    values = [1e-3] * 1000 + [3e-2] * 1000
    assert _lr(values) == [("lr_jump", "firing", 1000)]
    nan = [1e-3] * 10 + [math.nan, 1e-3]
    assert _lr(nan) == [("nonfinite", "firing", 10), ("nonfinite", "resolved", 11)]
