"""Demo training job: a small numpy MLP on scikit-learn's bundled digits, instrumented.

It exists to exercise the whole traintrail path end to end in seconds on a
CPU: a RunStarted context, a DatasetUsed record with a content hash, per-step
metrics, a checkpoint every few epochs, and a deliberate learning-rate jump halfway
through so the loss spikes and the loss-spike detector has something to find.

    python examples/train_digits.py --epochs 40 --lr 0.05 --seed 0

The run id is printed on the last line of stdout as `run_id=<id>`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import agent.sdk as traintrail

__all__ = ["main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".traintrail/checkpoints", help="checkpoint directory")
    p.add_argument("--socket", default=None, help="agent socket (default: SDK default)")
    p.add_argument("--ckpt-every", type=int, default=5, help="checkpoint every N epochs (and last)")
    return p.parse_args(argv)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def progress(epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
    """A live bar on a terminal; one line per epoch in a log file."""
    tty = sys.stderr.isatty()
    if not tty and step != steps:
        return
    done = int(30 * step / steps)
    bar = "#" * done + "." * (30 - done)
    line = f"[{bar}] epoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss:.4f}"
    sys.stderr.write(f"\r{line}" if tty else f"    {line}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0)

    hidden, batch_size = 64, 64
    steps_per_epoch = -(-len(x_train) // batch_size)
    total_steps = args.epochs * steps_per_epoch
    config = {
        "lr": args.lr,
        "epochs": args.epochs,
        "hidden": hidden,
        "batch_size": batch_size,
        "seed": args.seed,
        "lr_jump_at": total_steps // 2,
        "lr_jump_factor": 20.0,
    }
    out = Path(args.out)
    with traintrail.start_run(
        project="demo", name=f"digits-mlp-seed{args.seed}", config=config, socket_path=args.socket
    ) as run:
        run.log_dataset(
            "sklearn-digits",
            version=sklearn.__version__,
            uri="sklearn.datasets.load_digits",
            license="CC BY 4.0",  # UCI ML hand-written digits
            preprocessing=["scale /16", "train/test split 80/20 seed 0"],
            content_hash=hashlib.sha256(np.ascontiguousarray(digits.data).tobytes()).hexdigest(),
        )
        rng = np.random.default_rng(args.seed)
        w1 = rng.normal(0, np.sqrt(2 / 64), (64, hidden))
        b1 = np.zeros(hidden)
        w2 = rng.normal(0, np.sqrt(1 / hidden), (hidden, 10))
        b2 = np.zeros(10)
        run_dir = out / run.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        step = 0
        loss = float("nan")
        for epoch in range(args.epochs):
            order = rng.permutation(len(x_train))
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                xb, yb = x_train[idx], y_train[idx]
                lr = args.lr * (config["lr_jump_factor"] if step >= config["lr_jump_at"] else 1.0)
                h = np.maximum(xb @ w1 + b1, 0.0)
                p = softmax(h @ w2 + b2)
                loss = float(-np.log(p[np.arange(len(yb)), yb] + 1e-12).mean())
                accuracy = float((p.argmax(axis=1) == yb).mean())
                grad = p
                grad[np.arange(len(yb)), yb] -= 1.0
                grad /= len(yb)
                dh = (grad @ w2.T) * (h > 0)
                w2 -= lr * (h.T @ grad)
                b2 -= lr * grad.sum(axis=0)
                w1 -= lr * (xb.T @ dh)
                b1 -= lr * dh.sum(axis=0)
                run.log({"loss": loss, "accuracy": accuracy, "lr": lr}, step=step)
                step += 1
                progress(epoch, args.epochs, step - epoch * steps_per_epoch, steps_per_epoch, loss)
            h = np.maximum(x_test @ w1 + b1, 0.0)
            test_accuracy = float(((h @ w2 + b2).argmax(axis=1) == y_test).mean())
            run.log({"test_accuracy": test_accuracy}, step=step - 1)
            if (epoch + 1) % args.ckpt_every and epoch + 1 != args.epochs:
                continue
            path = run_dir / f"epoch-{epoch:03d}.npz"
            np.savez(path, w1=w1, b1=b1, w2=w2, b2=b2)
            run.log_checkpoint(
                path, step=step - 1, metrics={"loss": loss, "test_accuracy": test_accuracy}
            )
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    print(f"final loss={loss:.4f} test_accuracy={test_accuracy:.4f}")
    print(f"run_id={run.run_id}")
    return run.run_id


if __name__ == "__main__":
    main()
