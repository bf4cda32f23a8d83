"""Record a PyTorch Lightning `Trainer.fit` with traintrail.

    from agent.sdk.integrations.lightning import TraintrailCallback

    trainer = Trainer(max_epochs=10, callbacks=[TraintrailCallback("vision")])
    trainer.fit(model, datamodule)

Uses `lightning.pytorch`, else the standalone `pytorch_lightning` (Lightning
only accepts callbacks derived from the package it runs from).

Metrics come from `trainer.callback_metrics`, which keeps every name's latest
value, stale ones included (`val_loss` stays there through the next epoch).
Lightning computes each new value into a fresh tensor and hands out views of
that memory until the value changes, so a name is recorded when its tensor's
memory differs from that of the one recorded last (kept alive, so addresses
are not reused): each value once, at the global step where it first shows up.
The batch loss from `training_step` is recorded as `loss`. Tensors are passed
as they are (no `.item()` or transfer added here), and every rank reads
`callback_metrics` at the same hooks, so an epoch aggregate needing a
collective (`sync_dist=True`) is computed where Lightning computes it anyway.

Checkpoints: `on_save_checkpoint` runs before the file is written and
`ModelCheckpoint` is always ordered after other callbacks, so no hook sees the
file. Instead `trainer.save_checkpoint`, which every checkpoint callback and
user code goes through, is wrapped on this trainer during `fit`: when it
returns, the file (or directory) is on disk and is recorded with its step. A
path not there yet (asynchronous CheckpointIO) is retried at later hooks and
at fit end, after Lightning has waited for its writes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - the standalone package instead
    from pytorch_lightning import (  # type: ignore[assignment, unused-ignore]
        Callback,
        LightningModule,
        Trainer,
    )

import agent.sdk as traintrail

__all__ = ["TraintrailCallback"]

log = logging.getLogger(__name__)

_SUFFIXES = ("_step", "_epoch")


class TraintrailCallback(Callback):  # type: ignore[misc, unused-ignore]  # Any if not installed
    """A Lightning callback that records the fit: config, metrics, checkpoints, outcome.

    Args:
        project: what the run belongs to.
        name: the run's label (default: the SDK's `<script>-<id>`).
        config: extra config recorded beside `hparams.*` and `trainer.*`.
        log_every_n_steps: record step metrics every n optimizer steps (epoch
            and validation values are always recorded).
        checkpoint: record every checkpoint the trainer saves.
        **start_run_kwargs: passed to `agent.sdk.start_run` (run_id, socket_path,
            stop_on: an alert named there stops the fit via `trainer.should_stop`).
    """

    def __init__(
        self,
        project: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        log_every_n_steps: int = 1,
        checkpoint: bool = True,
        **start_run_kwargs: Any,
    ) -> None:
        if not isinstance(project, str) or not project:
            raise TypeError("project must be a non-empty str")
        if type(log_every_n_steps) is not int or log_every_n_steps < 1:
            raise ValueError("log_every_n_steps must be an int >= 1")
        self.project = project
        self.name = name
        self.config = dict(config or {})
        self.log_every_n_steps = log_every_n_steps
        self.checkpoint = checkpoint
        self.start_run_kwargs = start_run_kwargs
        self.run: traintrail.Run | None = None
        self._recorded: dict[str, object] = {}  # name -> the value last recorded
        self._last_step = 0
        self._pending: list[tuple[str, int]] = []  # checkpoints not on disk yet
        self._wrapper: Callable[..., None] | None = None  # our trainer.save_checkpoint
        self._warned: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start the run with the module's hparams and the trainer's settings as config."""
        self._recorded, self._last_step, self._pending = {}, 0, []
        try:
            config = {
                **self.config,
                "hparams": dict(pl_module.hparams),
                "trainer": {
                    "max_epochs": trainer.max_epochs,
                    "max_steps": trainer.max_steps,
                    "precision": trainer.precision,
                    "accumulate_grad_batches": trainer.accumulate_grad_batches,
                    "devices": trainer.num_devices,
                    "num_nodes": trainer.num_nodes,
                    "strategy": type(trainer.strategy).__name__,
                    "world_size": trainer.world_size,
                },
            }
            self.run = traintrail.start_run(
                self.project, self.name, config=config, **self.start_run_kwargs
            )
        except Exception:
            self.run = None
            self._warn_once("start", "cannot start the run; training goes on unrecorded")
            return
        if self.checkpoint:
            self._wrap_save_checkpoint(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Record what is still new (the last epoch's values), then finish the run."""
        self._record(trainer, self._new_values(trainer))
        self._finish(trainer, "finished")

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        """A fit that raised: the run is "failed" ("killed" for Ctrl-C), with the error."""
        status = "killed" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._finish(trainer, status, f"{type(exception).__name__}: {exception}")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Leave the trainer as it was, whatever happened."""
        self._unwrap_save_checkpoint(trainer)

    # -- metrics -----------------------------------------------------------------------------

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Step metrics (and the batch loss) every `log_every_n_steps` optimizer steps;
        a `stop_on` alert stops the fit here."""
        if self.run is not None and self.run.should_stop and not trainer.should_stop:
            self._warn_once("stop", f"stopping the fit: {self.run.stop_reason}")
            trainer.should_stop = True
        step = trainer.global_step
        if step == self._last_step or step % self.log_every_n_steps:
            return  # no optimizer step since the last call (gradient accumulation)
        self._last_step = step
        values = self._new_values(trainer)
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None and callable(getattr(loss, "item", None)):
            values.setdefault("loss", loss)
        self._record(trainer, values)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Epoch aggregates of values logged with `on_epoch=True`."""
        self._record(trainer, self._new_values(trainer))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Validation values, at the global step they were computed for."""
        if not trainer.sanity_checking:
            self._record(trainer, self._new_values(trainer))

    def _new_values(self, trainer: Trainer) -> dict[str, Any]:
        """Values of callback_metrics not recorded yet (see the module docstring).

        A value logged with on_step and on_epoch appears under both `x` and
        `x_step` (or `x_epoch`): it is recorded once, under the suffixed name.
        """
        if self.run is None:
            return {}
        new: list[tuple[str, Any]] = []
        for name, value in trainer.callback_metrics.items():
            if _same(self._recorded.get(name), value):
                continue
            self._recorded[name] = value  # keeps its memory alive, so its address stays unique
            twin = next((i for i, (_, v) in enumerate(new) if _same(v, value)), None)
            if twin is None:
                new.append((name, value))
            elif name.endswith(_SUFFIXES):
                new[twin] = (name, value)
        return dict(new)

    def _record(self, trainer: Trainer, values: dict[str, Any]) -> None:
        self._retry_pending()
        if self.run is None or not values or not trainer.is_global_zero:
            return
        try:
            self.run.log(values, step=trainer.global_step)
        except (TypeError, ValueError):
            self._warn_once("log", "a logged value is not a scalar; those values are skipped")

    # -- checkpoints -------------------------------------------------------------------------

    def _wrap_save_checkpoint(self, trainer: Trainer) -> None:
        original: Callable[..., None] = trainer.save_checkpoint

        def save_checkpoint(filepath: str | Path, *args: Any, **kwargs: Any) -> None:
            original(filepath, *args, **kwargs)
            if trainer.is_global_zero:  # the rank that writes the file
                self._checkpoint_saved(str(filepath), trainer.global_step)

        self._wrapper = save_checkpoint
        trainer.save_checkpoint = save_checkpoint  # type: ignore[method-assign, unused-ignore]

    def _unwrap_save_checkpoint(self, trainer: Trainer) -> None:
        if self._wrapper is not None and vars(trainer).get("save_checkpoint") is self._wrapper:
            del trainer.save_checkpoint  # the class's method again
        self._wrapper = None

    def _checkpoint_saved(self, path: str, step: int) -> None:
        if "://" in path and not path.startswith("file://"):
            self._warn_once("remote", f"checkpoint {path} is not a local path; not recorded")
            return
        self._pending.append((path.removeprefix("file://"), step))
        self._retry_pending()

    def _retry_pending(self, final: bool = False) -> None:
        """Record the checkpoints now on disk; keep the others for later (or give up)."""
        pending, self._pending = self._pending, []
        for path, step in pending:
            if self.run is None or self.run.status is not None:
                return
            if not Path(path).exists():
                if final:
                    self._warn_once("missing", f"checkpoint {path} never appeared; not recorded")
                else:
                    self._pending.append((path, step))
                continue
            try:
                self.run.log_checkpoint(path, step=step)
            except OSError:
                self._warn_once("checkpoint", f"cannot record checkpoint {path}")

    def _finish(self, trainer: Trainer, status: str, error: str | None = None) -> None:
        self._unwrap_save_checkpoint(trainer)
        if self.run is not None:
            self._retry_pending(final=True)
            self.run.finish(status, error=error)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("traintrail: %s", message, exc_info=sys.exc_info()[1] is not None)


def _same(recorded: Any, value: Any) -> bool:
    """The same value: the same object, or a view of the same tensor memory."""
    if recorded is value:
        return True
    if recorded is None:
        return False
    try:
        return bool(recorded.data_ptr() == value.data_ptr() and recorded.device == value.device)
    except Exception:  # not a tensor, or one without storage: identity only
        return False
