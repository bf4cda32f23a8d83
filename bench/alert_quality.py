"""Detector quality on labelled loss curves from real (small) training runs.

Curves come from numpy models trained here on scikit-learn's bundled datasets
(a softmax MLP on digits, logistic regression on breast cancer, linear
regression on diabetes), mini-batch SGD, so the noise is real mini-batch
noise and the warm-up is a real warm-up. Each run is either clean or gets
faults injected at known steps; the labels are those steps:

- lr_jump: the learning rate x30-x100 for one to three steps (the loss usually
  jumps the step after; some jumps stay within the run's own noise, and the
  table says how many never rose above the highest loss of the 256 steps
  before: no detector can tell those from an ordinary batch);
- bad_batch: a batch with shuffled labels and inputs scaled x8 (its loss jumps);
- nan_batch: a batch containing a NaN sample, whose update is skipped the way
  mixed-precision loss scaling skips it (NaN loss that step only);
- nan_poison: a NaN sample whose update is applied (the weights go NaN and
  the loss stays NaN from there);
- lr_diverge: the learning rate x20-x60 for good from that step (the loss
  jumps and stays up, climbs, or overflows to Inf/NaN: a spike episode that
  stays open, a divergence or a nonfinite alert within AFTER steps finds it).

Each step logs the loss, the norm of the whole gradient and the learning rate
(what HF Trainer logs by default), and all go through the collector's Watcher with the
default rules (`collector.preview.preview_points`). Runs follow one of three
schedules, as real ones do: constant, linear warm-up from 0 over 200 steps then
cosine decay to a tenth, or step decay (x0.3 at 40 % and 75 % of the run); a
learning-rate fault multiplies the scheduled rate. A spike injection counts as
found when a spike or lr_jump alert (on any metric) fires within 10 steps after it,
a NaN injection when a nonfinite alert fires at its step. The table also counts
what the loss alone found, and what loss and gradient norm found without the
learning rate. Any alert on a clean run is false; so is
an alert on an injected run that no injection explains, except a divergence
alert within 600 steps after a fault: a bad batch or a large learning-rate
step can leave the model worse for hundreds of steps, a real sustained rise
(counted apart as "after a fault").

    python bench/alert_quality.py [CLEAN_RUNS=60] [FAULTY_RUNS=60] [STEPS=5000]
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.preview import preview_points
from collector.watch import AlertRules

SPIKE_WINDOW = 10  # steps after an injection in which a spike alert counts
GAP = 400  # steps between injected faults
AFTER = 600  # a divergence alert this soon after a fault is its consequence
EFFECTS = (("< 1x", 1.0), ("1-2x", 2.0), ("2-3x", 3.0), (">= 3x", np.inf))
KINDS = ("lr_jump", "bad_batch", "nan_batch", "nan_poison", "lr_diverge")
TERMINAL = ("nan_poison", "lr_diverge")  # only as a run's last fault
DETECTOR_OF = {"lr_jump": "spike", "bad_batch": "spike", "nan_batch": "nonfinite",
               "nan_poison": "nonfinite", "lr_diverge": "divergence"}  # fmt: skip
FOUND_BY = {"spike": ("spike", "lr_jump"), "nonfinite": ("nonfinite",),
            "divergence": ("divergence", "nonfinite", "spike", "lr_jump")}  # fmt: skip
SCHEDULES = ("constant", "warmup_cosine", "step")


@dataclass
class Task:
    name: str
    x: np.ndarray
    y: np.ndarray
    classes: int  # 0: regression
    lr: float
    batch: int


def tasks() -> list[Task]:
    d = load_digits()
    b = load_breast_cancer()
    r = load_diabetes()
    bx = (b.data - b.data.mean(0)) / b.data.std(0)
    rx = (r.data - r.data.mean(0)) / r.data.std(0)
    ry = (r.target - r.target.mean()) / r.target.std()
    return [
        Task("digits-mlp", d.data / 16.0, d.target, 10, 0.05, 32),
        Task("cancer-logreg", bx, b.target, 2, 0.05, 16),
        Task("diabetes-linreg", rx, ry, 0, 0.01, 16),
    ]


@dataclass
class Curve:
    task: str
    loss: np.ndarray
    grad_norm: np.ndarray  # of the step's whole gradient, as HF Trainer logs it by default
    lr: np.ndarray  # the rate each step's update used (HF Trainer logs it too)
    faults: dict[int, str] = field(default_factory=dict)  # step -> kind


def schedule(kind: str, base: float, steps: int) -> np.ndarray:
    """The learning rate of every step under one of SCHEDULES."""
    i = np.arange(steps, dtype=float)
    if kind == "warmup_cosine":
        warm = 200
        decay = 0.55 + 0.45 * np.cos(np.pi * np.maximum(0, i - warm) / (steps - warm))
        return base * np.minimum(1.0, i / warm) * decay
    if kind == "step":
        return base * 0.3 ** ((i >= 0.4 * steps).astype(float) + (i >= 0.75 * steps))
    return np.full(steps, base)


def train(task: Task, steps: int, faults: dict[int, str], seed: int, sched: str) -> Curve:
    """Mini-batch SGD; one hidden layer for classification, linear for regression."""
    rng = np.random.default_rng(seed)
    n_in = task.x.shape[1]
    hidden = 32 if task.classes else 0
    out = max(task.classes, 1)
    w1 = rng.normal(0, np.sqrt(2 / n_in), (n_in, hidden)) if hidden else None
    w2 = rng.normal(0, 0.1, (hidden or n_in, out))
    loss = np.empty(steps)
    grad_norm = np.empty(steps)
    lrs = schedule(sched, task.lr, steps)
    jump_until, jump = -1, 1.0
    for step in range(steps):
        idx = rng.integers(0, len(task.x), task.batch)
        xb, yb = task.x[idx].copy(), task.y[idx].copy()
        kind = faults.get(step)
        if kind == "lr_diverge":
            jump_until, jump = steps, float(rng.uniform(20, 60))
        elif kind == "lr_jump":
            jump_until, jump = step + int(rng.integers(1, 4)), float(rng.uniform(30, 100))
        elif kind == "bad_batch":
            xb *= 8.0
            yb = rng.permutation(yb) if task.classes else -yb * 4
        elif kind in ("nan_batch", "nan_poison"):
            xb[0, int(rng.integers(0, n_in))] = np.nan
        lr = lrs[step] = lrs[step] * (jump if step < jump_until else 1.0)
        h = np.maximum(xb @ w1, 0.0) if w1 is not None else xb
        z = h @ w2
        if task.classes:
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            loss[step] = -np.log(p[np.arange(len(yb)), yb] + 1e-12).mean()
            grad = p
            grad[np.arange(len(yb)), yb] -= 1.0
        else:
            err = z[:, 0] - yb
            loss[step] = float((err**2).mean())
            grad = 2 * err[:, None]
        grad /= len(yb)
        g2 = h.T @ grad
        g1 = xb.T @ ((grad @ w2.T) * (h > 0)) if w1 is not None else None
        sq = float((g2**2).sum()) + (float((g1**2).sum()) if g1 is not None else 0.0)
        grad_norm[step] = np.sqrt(sq)
        if kind == "nan_batch":
            continue  # loss scaling: a non-finite step is skipped
        if w1 is not None:
            w1 -= lr * g1
        w2 -= lr * g2
    return Curve(task.name, loss, grad_norm, lrs, faults)


def inject(rng: np.random.Generator, steps: int, count: int) -> dict[int, str]:
    """`count` faults at random steps after a 300-step warm-up, at least
    GAP steps apart (more than the 300 s cooldown at a step a second, which
    would otherwise mute the second of two faults by design), at most one
    weight-poisoning NaN (the run is dead after it), placed last."""
    faults: dict[int, str] = {}
    slots = np.arange(300, steps - 50, GAP)
    points = np.sort(rng.choice(slots, min(count, len(slots)), replace=False))
    for k, step in enumerate(points.tolist()):
        kinds = KINDS if k == len(points) - 1 else tuple(x for x in KINDS if x not in TERMINAL)
        faults[step] = str(rng.choice(kinds))
    return faults


def score(curve: Curve, alerts: list[dict[str, object]], tally: dict[str, Counter[str]]) -> None:
    fired = [(str(a["detector"]), int(a["step"])) for a in alerts  # type: ignore[call-overload]
             if a["state"] == "firing" and a["step"] is not None]  # fmt: skip
    on_loss = [str(a["metric"]) == "loss" for a in alerts
               if a["state"] == "firing" and a["step"] is not None]  # fmt: skip
    not_lr = [str(a["metric"]) != "learning_rate" for a in alerts
              if a["state"] == "firing" and a["step"] is not None]  # fmt: skip
    explained: set[int] = set()
    poisoned = min((s for s, k in curve.faults.items() if k in TERMINAL), default=None)
    for step, kind in curve.faults.items():
        detector = DETECTOR_OF[kind]
        found_by = FOUND_BY[detector]
        if detector == "divergence":
            hit = [i for i, (d, s) in enumerate(fired)
                   if d in found_by and step <= s <= step + AFTER]  # fmt: skip
        else:
            lo, hi = (step, step) if detector == "nonfinite" else (step, step + SPIKE_WINDOW)
            hit = [i for i, (d, s) in enumerate(fired) if d in found_by and lo <= s <= hi]
        tally[kind]["injected"] += 1
        tally[kind]["found"] += bool(hit)
        tally[kind]["by_loss"] += any(on_loss[i] for i in hit)
        tally[kind]["no_lr"] += any(not_lr[i] for i in hit)
        if detector == "spike":  # by effect: the peak over the run's recent maximum
            before = curve.loss[max(0, step - 256) : step]
            effect = np.nanmax(curve.loss[step : step + SPIKE_WINDOW + 1]) / before.max()
            size = next(label for label, upper in EFFECTS if effect < upper)
            tally[f"effect {size}"]["injected"] += 1
            tally[f"effect {size}"]["found"] += bool(hit)
            tally[f"effect {size}"]["by_loss"] += any(on_loss[i] for i in hit)
            tally[f"effect {size}"]["no_lr"] += any(not_lr[i] for i in hit)
        explained.update(hit)
    for i, (detector, step) in enumerate(fired):
        if i in explained or (poisoned is not None and step >= poisoned):
            continue  # after a poisoning NaN the run is dead: nothing is false there
        if detector == "divergence" and any(0 < step - s <= AFTER for s in curve.faults):
            tally[detector]["after_fault"] += 1
            continue
        tally[detector]["false"] += 1
    for detector, _ in fired:
        tally[detector]["fired"] += 1


def run_all(clean: int, faulty: int, steps: int) -> tuple[dict[str, Counter[str]], int, int, float]:
    rules = AlertRules()
    rng = np.random.default_rng(7)
    tally: dict[str, Counter[str]] = defaultdict(Counter)
    clean_steps = clean_false = 0
    watch_s = 0.0
    all_tasks = tasks()
    for i in range(clean + faulty):
        task = all_tasks[i % len(all_tasks)]
        faults = inject(rng, steps, int(rng.integers(2, 7))) if i >= clean else {}
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging run overflows: the fault
            curve = train(task, steps, faults, 1000 + i, SCHEDULES[(i // len(all_tasks)) % 3])
        t0 = time.perf_counter()
        alerts = _preview(rules, f"{task.name}-{i}", curve)
        watch_s += time.perf_counter() - t0
        if not faults:
            clean_steps += steps
            clean_false += sum(1 for a in alerts if a["state"] == "firing")
            for a in alerts:
                if a["state"] == "firing":
                    tally[str(a["detector"])]["false"] += 1
                    tally[str(a["detector"])]["fired"] += 1
        else:
            score(curve, alerts, tally)
    return tally, clean_steps, clean_false, watch_s


def _recall_row(label: str, c: Counter[str], target: str) -> None:
    recall = c["found"] / c["injected"] if c["injected"] else float("nan")
    by_loss = c["by_loss"] / c["injected"] if c["injected"] else float("nan")
    no_lr = c["no_lr"] / c["injected"] if c["injected"] else float("nan")
    print(f"{label:<20} {c['injected']:>9} {c['found']:>6} {recall:>7.3f} {by_loss:>11.3f} "
          f"{no_lr:>11.3f}  {target}")  # fmt: skip


def _preview(rules: AlertRules, run_id: str, curve: Curve) -> list[dict[str, object]]:
    """The three metrics a step, in the order a training loop logs them."""
    n = len(curve.loss)
    steps = np.repeat(np.arange(n), 3)
    values = np.empty(3 * n)
    values[0::3], values[1::3], values[2::3] = curve.loss, curve.grad_norm, curve.lr
    names = ["loss", "grad_norm", "learning_rate"] * n
    return preview_points(rules, run_id, names, steps, steps * 1_000_000, values)


def main() -> None:
    clean = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    faulty = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    tally, clean_steps, clean_false, watch_s = run_all(clean, faulty, steps)
    total = (clean + faulty) * steps * 3  # loss, grad_norm and learning_rate each step
    print(f"\n{clean} clean + {faulty} faulty runs x {steps} steps "
          f"({', '.join(t.name for t in tasks())}); default rules")  # fmt: skip
    print(f"\n{'injected fault':<20} {'injected':>9} {'found':>6} {'recall':>7} "
          f"{'loss alone':>11} {'without lr':>11}  target")  # fmt: skip
    for kind in KINDS:
        _recall_row(kind, tally[kind], ">= 0.95")
    print("spike faults by effect (peak in the 10 steps after / max of the 256 before):")
    for label, _ in EFFECTS:
        _recall_row(f"  {label}", tally[f"effect {label}"], "")
    print(f"\n{'detector':<14} {'fired':>9} {'false':>6} {'precision':>9} {'after a fault':>14}")
    for detector in ("spike", "lr_jump", "nonfinite", "divergence", "stall"):
        c = tally[detector]
        precision = 1 - c["false"] / c["fired"] if c["fired"] else float("nan")
        print(f"{detector:<14} {c['fired']:>9} {c['false']:>6} {precision:>9.3f} "
              f"{c['after_fault']:>14}")  # fmt: skip
    per_100k = clean_false / clean_steps * 100_000 if clean_steps else float("nan")
    print(f"\nfalse alerts on clean runs: {clean_false} in {clean_steps:,} steps "
          f"= {per_100k:.2f} per 100,000 steps (target <= 1)")  # fmt: skip
    print(f"watch cost: {watch_s / total * 1e6:.1f} µs per point ({total:,} points)")


if __name__ == "__main__":
    main()
