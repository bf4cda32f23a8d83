"""Cost of `run.log` in the training thread, next to MLflow, W&B and the floor.

Per-call median and p99 (time.perf_counter_ns around each call, after a
warm-up) with 1 and with 20 metrics per call, all in one process and run:

- floor: a bare `deque.append((step, time.time_ns(), metrics))`, the tuple
  `run.log` buffers;
- traintrail `run.log`, delivering to an agent stand-in: a minimal real
  unix-socket server in its own process that parses each batch line and acks
  it as the agent does (no Avro encoding, no spool fsync: this measures the
  SDK, not the agent); plus `finish()` after 100,000 steps x 20 metrics;
- MLflow `log_metrics` on a file store (MLFLOW_ALLOW_FILE_STORE=true),
  synchronous, and with `synchronous=False` (its `end_run` timed too);
- W&B `wandb.log` in offline mode (its `finish` timed too);
- a real training loop (numpy MLP on sklearn's digits, ~1 ms a step) with and
  without `run.log` of 20 metrics every step: wall-time overhead.

MLflow and W&B are not project dependencies: install them into a bench venv:

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install -e '.[agent,demo]' mlflow wandb
    /tmp/benchvenv/bin/python bench/sdk_log_cost.py [N=100000] [N_SLOW=2000] [LOOP_STEPS=500]

`bench/sdk_log_cost.py interleaved [BLOCKS=60] [all|1|all,1]` prints only the steady-state
wall-time overhead of the training loop (BLAS on every core, then on one);
it needs no MLflow or W&B.

A library that is not installed is reported as such, not faked.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import agent.sdk as traintrail
from agent.sdk.client import FLUSH_INTERVAL_S

Metrics = dict[str, Any]


def _serve(path: str, ready: Any) -> None:
    """The agent's SDK socket protocol: one JSON batch line in, one ack line out."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen()
    ready.set()
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as reader:
            for raw in reader:
                n = len(json.loads(raw)["events"])
                conn.sendall(b'{"ok": true, "accepted": %d, "rejected": []}\n' % n)


@contextlib.contextmanager
def agent_stand_in(path: str) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_serve, args=(path, ready), daemon=True)
    proc.start()
    ready.wait(30)
    try:
        yield
    finally:
        proc.kill()
        proc.join()


def metrics_for(step: int, width: int) -> Metrics:
    return {f"m{k:02d}": 1.0 / (step + k + 1) for k in range(width)}


def per_call(fn: Callable[[Metrics, int], object], n: int, width: int, warm: int) -> list[int]:
    """Nanoseconds of each of `n` calls (after `warm` untimed ones); fresh values each step."""
    pc = time.perf_counter_ns
    for i in range(warm):
        fn(metrics_for(i, width), i)
    out = [0] * n
    for i in range(n):
        m = metrics_for(warm + i, width)
        t0 = pc()
        fn(m, warm + i)
        out[i] = pc() - t0
    return out


def stats(ns: list[int]) -> tuple[float, float]:
    s = sorted(ns)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def bench_floor(n: int, width: int) -> list[int]:
    buf: deque[tuple[int, int, Metrics]] = deque()
    append, now = buf.append, time.time_ns
    return per_call(lambda m, i: append((i, now(), m)), n, width, 1000)


def bench_traintrail(sock: str, n: int, width: int) -> tuple[list[int], float, int]:
    run = traintrail.start_run("bench", socket_path=sock)
    # the default bound (2M points buffered, ~120 MB) is below what a tight loop of
    # 100k x 20 leaves unencoded: raise it here so finish() is timed on all points
    run._client.max_points = 4_000_000
    times = per_call(lambda m, i: run.log(m, step=i), n, width, 1000)
    t0 = time.perf_counter()
    run.finish(timeout=60)
    return times, time.perf_counter() - t0, run.dropped_points


def bench_mlflow(tmp: str, n: int, width: int, synchronous: bool) -> tuple[list[int], float]:
    import mlflow

    mlflow.set_tracking_uri(Path(tmp, f"mlruns-{width}-{synchronous}").as_uri())
    mlflow.start_run()
    times = per_call(
        lambda m, i: mlflow.log_metrics(m, step=i, synchronous=synchronous), n, width, 100
    )
    t0 = time.perf_counter()
    mlflow.end_run()
    return times, time.perf_counter() - t0


def bench_wandb(tmp: str, n: int, width: int) -> tuple[list[int], float]:
    import wandb

    run = wandb.init(mode="offline", dir=tmp, project="bench", settings=wandb.Settings(silent=True))
    times = per_call(lambda m, i: run.log(m, step=i), n, width, 100)
    t0 = time.perf_counter()
    run.finish()
    return times, time.perf_counter() - t0


def mlp_step(hidden: int = 256, batch: int = 128) -> Callable[[], Metrics]:
    """One minibatch SGD step of a 64-hidden-hidden-10 ReLU MLP on digits per
    call; returns the step's 20 metrics (computed whether logged or not)."""
    import numpy as np
    from sklearn.datasets import load_digits

    x_all, y_all = load_digits(return_X_y=True)
    x_all = (x_all / 16.0).astype(np.float64)
    rng = np.random.default_rng(0)
    sizes = [64, hidden, hidden, 10]
    ws = [rng.normal(0, (2 / a) ** 0.5, (a, b)) for a, b in itertools.pairwise(sizes)]
    bs = [np.zeros(b) for b in sizes[1:]]
    lr = 0.05

    def step() -> Metrics:
        idx = rng.integers(0, len(x_all), batch)
        x, y = x_all[idx], y_all[idx]
        acts = [x]
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            acts.append(np.maximum(acts[-1] @ w + b, 0.0))
        logits = acts[-1] @ ws[-1] + bs[-1]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(batch), y] + 1e-12).mean()
        acc = (p.argmax(axis=1) == y).mean()
        g = p
        g[np.arange(batch), y] -= 1.0
        g /= batch
        grads = []
        for layer in range(len(ws) - 1, -1, -1):
            gw, gb = acts[layer].T @ g, g.sum(axis=0)
            grads.append((gw, gb))
            if layer:
                g = (g @ ws[layer].T) * (acts[layer] > 0)
        for (gw, gb), w, b in zip(grads, reversed(ws), reversed(bs), strict=True):
            w -= lr * gw
            b -= lr * gb
        metrics = {"loss": loss, "acc": acc, "lr": lr}  # numpy scalars, as users log them
        for k, (gw, gb) in enumerate(grads):
            metrics[f"grad_w{k}"] = np.abs(gw).max()
            metrics[f"grad_b{k}"] = np.abs(gb).max()
        for k in range(len(metrics), 20):
            metrics[f"extra{k}"] = loss * k
        return metrics

    return step


def training_loop(steps: int, run: Any, hidden: int = 256, batch: int = 128) -> float:
    """`steps` MLP steps, logging their 20 metrics if `run`; wall seconds."""
    step_fn = mlp_step(hidden, batch)
    t0 = time.perf_counter()
    for step in range(steps):
        metrics = step_fn()
        if run is not None:
            run.log(metrics, step=step)
    return time.perf_counter() - t0


def interleaved_overhead(
    sock: str,
    blocks: int = 60,
    block_steps: int = 400,
    trim: int = 150,
    hidden: int = 256,
    blas_threads: int | None = None,
) -> str:
    """Wall-time overhead in steady state, drift cancelled by interleaving.

    One model and one open run; blocks of `block_steps` steps alternate
    between logging 20 metrics a step and not logging, in ABBA order. The
    first `trim` steps of every block are left out of its mean step time, so
    the sender's last cycle for a logged block (it runs within FLUSH_INTERVAL_S,
    0.25 s; 150 steps of this loop take 0.35-0.5 s) never
    lands in the unlogged block after it, and every logged block is measured
    with its sender cycles in full. Each logged block is compared with the
    unlogged blocks on either side (about a second away: this VM's speed
    drifts over tens of seconds, so adjacent blocks see the same machine).

    `blas_threads=None` lets numpy's BLAS use every core: the worst case, a loop
    that saturates the CPU, where every microsecond of the sender and the agent
    is taken from it. `blas_threads=1` leaves this VM's second core to the rest,
    as a GPU node does: its training thread mostly waits on the device and the
    node has cores to spare.
    """
    from threadpoolctl import threadpool_limits

    with (
        threadpool_limits(limits=blas_threads, user_api="blas")
        if blas_threads
        else contextlib.nullcontext()
    ):
        return _interleaved(sock, blocks, block_steps, trim, hidden, blas_threads)


def _interleaved(
    sock: str, blocks: int, block_steps: int, trim: int, hidden: int, blas_threads: int | None
) -> str:
    import numpy as np

    step_fn = mlp_step(hidden)
    for _ in range(200):
        step_fn()  # warm caches and BLAS
    run = traintrail.start_run("bench-interleaved", socket_path=sock)
    run.flush(60)
    means: list[tuple[bool, float]] = []
    step = 0
    pattern = (False, True, True, False)
    for block in range(blocks):
        logged = pattern[block % 4]
        marks = np.empty(block_steps + 1, dtype=np.int64)
        marks[0] = time.perf_counter_ns()
        for k in range(block_steps):
            metrics = step_fn()
            if logged:
                run.log(metrics, step=step)
            step += 1
            marks[k + 1] = time.perf_counter_ns()
        means.append((logged, float(marks[-1] - marks[trim]) / (block_steps - trim)))
    run.finish()
    diffs: list[float] = []
    for i, (logged, mean) in enumerate(means):
        if not logged:
            continue
        near = [m for j, (lg, m) in enumerate(means) if not lg and abs(j - i) <= 2]
        base = sum(near) / len(near)
        diffs.append((mean - base) / base * 100)
    diffs.sort()
    q = len(diffs) // 4
    # Each ABBA group of four blocks, on its own: its two logged blocks against
    # its two unlogged ones. Groups share no block, so their differences are
    # independent samples and their mean has an honest standard error.
    groups = [
        (g[1][1] + g[2][1]) / (g[0][1] + g[3][1]) * 100 - 100
        for g in (means[i : i + 4] for i in range(0, len(means) - 3, 4))
    ]
    mean = statistics.fmean(groups) if groups else math.nan
    half = 1.96 * statistics.stdev(groups) / math.sqrt(len(groups)) if len(groups) > 1 else math.nan
    plain = [m for lg, m in means if not lg]
    return (
        f"training loop, interleaved steady state ({hidden}-wide MLP, BLAS on "
        f"{blas_threads or 'all'} thread(s), "
        f"{sorted(plain)[len(plain) // 2] / 1e6:.3f} ms/step plain; {blocks} blocks of "
        f"{block_steps} steps, first {trim} of each left out): logging 20 metrics a step "
        f"costs median {diffs[len(diffs) // 2]:+.2f} % wall time "
        f"(mean {sum(diffs) / len(diffs):+.2f} %, "
        f"quartiles {diffs[q]:+.2f} % .. {diffs[-q - 1]:+.2f} %, {len(diffs)} logged blocks); "
        f"per ABBA group: mean {mean:+.2f} % ± {half:.2f} % (95 %, {len(groups)} groups); "
        "target within 1 %"
    )


def idle_sender(sock: str, seconds: float = 20.0) -> str:
    """CPU of an open run's sender that has nothing to send: its wake-ups every
    FLUSH_INTERVAL_S. The interleaved measure compares logging with an open,
    idle run, so this is the part of "against no traintrail at all" it leaves out."""
    run = traintrail.start_run("bench-idle", socket_path=sock)
    run.flush(60)
    thread = run._client._thread
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    before, t0 = time.clock_gettime_ns(clock), time.perf_counter()
    time.sleep(seconds)
    used_ns, wall = time.clock_gettime_ns(clock) - before, time.perf_counter() - t0
    run.finish()
    return (
        f"open run, nothing logged: the sender uses {used_ns / wall / 1e7:.3f} % of a core "
        f"({used_ns / 1000 / (wall / FLUSH_INTERVAL_S):.0f} us per {FLUSH_INTERVAL_S} s wake-up, "
        f"over {wall:.0f} s)"
    )


def interleaved_only(blocks: int, threads: list[int | None]) -> None:
    """`sdk_log_cost.py interleaved [BLOCKS] [all|1|all,1]`: only the steady-state
    wall-time overhead, with BLAS on every core and/or on one."""
    with tempfile.TemporaryDirectory(prefix="tt-", dir="/tmp") as tmp:
        os.environ["TRAINTRAIL_SDK_SPOOL_DIR"] = f"{tmp}/sdk-spool"
        sock = f"{tmp}/agent.sock"
        with agent_stand_in(sock):
            print(idle_sender(sock), flush=True)
            for n in threads:
                print(interleaved_overhead(sock, blocks=blocks, blas_threads=n), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["interleaved"]:
        which = sys.argv[3].split(",") if len(sys.argv) > 3 else ["all", "1"]
        threads = [None if w == "all" else int(w) for w in which]
        interleaved_only(int(sys.argv[2]) if len(sys.argv) > 2 else 60, threads)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    n_slow = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    loop_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tt-", dir="/tmp") as tmp:
        os.environ["TRAINTRAIL_SDK_SPOOL_DIR"] = f"{tmp}/sdk-spool"
        sock = f"{tmp}/agent.sock"
        with agent_stand_in(sock):
            for width in (1, 20):
                floor = stats(bench_floor(n, width))
                tt, fin, dropped = bench_traintrail(sock, n, width)
                ttm = stats(tt)
                rows.append((f"floor deque.append, {width}", *_fmt(floor), f"n={n}"))
                if width == 20:
                    values = [v for i in range(n) for v in metrics_for(i, width).values()]
                    t0 = time.perf_counter()
                    array("d", map(float, values)).tobytes()
                    notes.append(
                        f"conversion floor: float() of the same {len(values)} values into one "
                        f"packed column takes {(time.perf_counter() - t0) * 1000:.0f} ms "
                        "(the sender's per-point work; the wire carries packed columns)"
                    )
                rows.append(
                    (
                        f"traintrail run.log, {width}",
                        *_fmt(ttm),
                        f"n={n}; finish {fin * 1000:.0f} ms; dropped {dropped}",
                    )
                )
                slowest: list[float] = []
                others: list[tuple[str, Callable[[int], tuple[list[int], float]]]] = [
                    ("MLflow file store sync", lambda w: bench_mlflow(tmp, n_slow, w, True)),
                    ("MLflow synchronous=False", lambda w: bench_mlflow(tmp, n_slow, w, False)),
                    ("W&B offline", lambda w: bench_wandb(tmp, n_slow, w)),
                ]
                for label, fn in others:
                    try:
                        times, end = fn(width)
                    except ImportError as exc:
                        rows.append((f"{label}, {width}", "-", "-", f"not installed: {exc.name}"))
                        continue
                    st = stats(times)
                    slowest.append(st[0])
                    end_name = "end_run" if "MLflow" in label else "finish"
                    rows.append(
                        (
                            f"{label}, {width}",
                            *_fmt(st),
                            f"n={n_slow}; {end_name} {end * 1000:.0f} ms",
                        )
                    )
                if slowest:
                    cheaper = min(slowest)
                    notes.append(
                        f"{width} metric(s): cheapest other library {cheaper:.1f} us median = "
                        f"{cheaper / ttm[0]:.0f}x traintrail's {ttm[0]:.2f} us"
                        f" (target >= 100x); traintrail p99 {ttm[1]:.1f} us (target < 50 us)"
                    )
            notes.append(_loop_overhead(sock, loop_steps))
            notes.append(_loop_overhead(sock, max(50, loop_steps // 5), 6, 1024, 512))
            notes.append(idle_sender(sock))
            notes.append(interleaved_overhead(sock))
            notes.append(interleaved_overhead(sock, blas_threads=1))
            notes.append(_cuda_no_sync(sock))
    print(f"{'what, metrics per call':38} {'median us':>10} {'p99 us':>10}  notes")
    for what, med, p99, note in rows:
        print(f"{what:38} {med:>10} {p99:>10}  {note}")
    for note in notes:
        print(note)


def _cuda_no_sync(sock: str) -> str:
    """With the GPU busy (a queue of large matmuls), log a CUDA scalar: no wait for the queue."""
    try:
        import torch
    except ImportError:
        return "CUDA tensors: torch not installed"
    if not torch.cuda.is_available():
        return "CUDA tensors: no GPU"
    a = torch.randn(8192, 8192, device="cuda")
    run = traintrail.start_run("bench-cuda", socket_path=sock)
    log_us: list[float] = []
    item_us: list[float] = []
    for step in range(20):
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)  # ~20 ms of queued GPU work
        loss = a.mean()
        t0 = time.perf_counter_ns()
        run.log({"loss": loss}, step=step)
        log_us.append((time.perf_counter_ns() - t0) / 1000)
        t0 = time.perf_counter_ns()
        loss.item()  # what logging it the usual way costs: wait for the queue
        item_us.append((time.perf_counter_ns() - t0) / 1000)
    run.finish()
    return (
        f"CUDA tensor, GPU busy: run.log median {sorted(log_us)[10]:.1f} us "
        f"(max {max(log_us):.1f}); loss.item() median {sorted(item_us)[10]:.0f} us (the sync)"
    )


def _fmt(st: tuple[float, float]) -> tuple[str, str]:
    return f"{st[0]:.2f}", f"{st[1]:.2f}"


def _loop_overhead(
    sock: str, steps: int = 500, pairs: int = 12, hidden: int = 256, batch: int = 128
) -> str:
    """Two measures of what logging 20 metrics a step costs a real loop.

    Wall time, A/B: `pairs` pairs of `steps`-step loops, in ABBA order so slow
    drift of this shared VM's speed (+-20 % between identical runs here) hits
    both arms alike; the median of the per-pair differences. CPU accounting:
    the time spent inside run.log on the training thread plus the sender
    thread's CPU time (its own clock), over the plain loop's time: what
    traintrail can take from the loop at most, even when a GIL-bound loop
    pays for every sender cycle.
    """
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "training loop: scikit-learn not installed (pip install '.[demo]')"
    training_loop(max(20, steps // 5), None, hidden, batch)  # warm caches and BLAS
    diffs: list[float] = []
    plain_t: list[float] = []
    start_s: list[float] = []
    in_log_ns = sender_ns = logged_steps = 0
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        times: dict[bool, float] = {}
        for logged in order:
            if not logged:
                times[False] = training_loop(steps, None, hidden, batch)
                continue
            t0 = time.perf_counter()
            run = traintrail.start_run("bench-loop", socket_path=sock)
            # the context snapshot (git, installed packages) is a one-time start cost:
            # let it finish before the loop so it is not billed to the steps
            run.flush(60)
            start_s.append(time.perf_counter() - t0)
            thread = run._client._thread
            assert thread.ident is not None
            clock = time.pthread_getcpuclockid(thread.ident)
            before = time.clock_gettime_ns(clock)
            timed = _TimedRun(run)
            times[True] = training_loop(steps, timed, hidden, batch)
            run.flush(60)  # the sender has encoded and sent every point: read its clock
            sender_ns += time.clock_gettime_ns(clock) - before
            in_log_ns += timed.ns
            logged_steps += steps
            run.finish()
        diffs.append((times[True] - times[False]) / times[False] * 100)
        plain_t.append(times[False])
    step_ms = sorted(plain_t)[pairs // 2] / steps * 1000
    per_step_us = (in_log_ns + sender_ns) / logged_steps / 1000
    diffs.sort()
    return (
        f"training loop (numpy MLP {hidden}x{hidden}, batch {batch}, on digits, "
        f"{step_ms:.3f} ms/step plain): "
        f"wall-time A/B over {pairs} ABBA pairs of {steps} steps: median overhead "
        f"{diffs[pairs // 2]:+.2f} % (pairs from {diffs[0]:+.1f} % to {diffs[-1]:+.1f} %); "
        f"CPU accounting: run.log {in_log_ns / logged_steps / 1000:.1f} us + sender "
        f"{sender_ns / logged_steps / 1000:.1f} us = {per_step_us:.1f} us a step = "
        f"{per_step_us / (step_ms * 10):.2f} % of a plain step (target within 1 %); "
        f"start_run until RunStarted delivered (one-time): "
        f"median {sorted(start_s)[len(start_s) // 2] * 1000:.0f} ms"
    )


class _TimedRun:
    """The run's log, timed around each call (perf_counter_ns costs ~0.1 us)."""

    def __init__(self, run: Any) -> None:
        self._run, self.ns = run, 0

    def log(self, metrics: Metrics, step: int) -> None:
        t0 = time.perf_counter_ns()
        self._run.log(metrics, step=step)
        self.ns += time.perf_counter_ns() - t0


if __name__ == "__main__":
    main()
