"""Detectors on synthetic loss curves with mini-batch noise, warm-up and injections."""

from __future__ import annotations

import math
import random

from collector.detectors import DivergenceConfig, SeriesDetector


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
    for i in range(700, 705):  # a bad stretch: 5 steps at 6x
        values[i] *= 6
    assert _run(values) == [("spike", "firing", 700), ("spike", "resolved", 705)]


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
