"""Record a Hugging Face `transformers.Trainer` run with traintrail.

    from agent.sdk.integrations.transformers import TraintrailCallback

    trainer = Trainer(model, args, train_dataset=ds, callbacks=[TraintrailCallback("nlp")])
    trainer.train()

The Trainer already decides when to log (`logging_steps`) and when to save
(`save_steps`), and already averages the loss it reports, so this callback
only forwards: `on_log` values become metric points at `state.global_step`,
each `on_save` becomes a CheckpointSaved event for the `checkpoint-<step>`
directory the Trainer has just written (hashed as a directory manifest), and
`on_train_end` finishes the run. The config recorded at `on_train_begin` is
TrainingArguments (without credentials: hub tokens and anything named like
a secret are dropped, not masked) plus the model's `config`.

The Trainer has no exception hook: a run whose `train()` raises stays open
until the SDK's interpreter-exit handler finishes it (as "failed" when the
exception ends the process), or until the script calls `callback.finish()`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import agent.sdk as traintrail
from agent.sdk.context import strip_credentials

__all__ = ["TraintrailCallback", "safe_training_args"]

log = logging.getLogger(__name__)

_SECRET = re.compile(
    r"(?:^|_)(?:token|secret|password|passwd|api_?key|credentials?|auth)(?:_|$)", re.IGNORECASE
)
"""Field names whose values are never recorded: hub_token, push_to_hub_token, *_secret, ...
(whole words only: `average_tokens_across_devices` is a setting, not a secret)."""


def safe_training_args(args: TrainingArguments) -> dict[str, Any]:
    """TrainingArguments.to_dict() without secret-looking fields, and URLs without userinfo.

    Dropped rather than masked, at any depth (`fsdp_config`, `deepspeed` and
    the like are nested dicts): `to_dict` masks top-level `*_token` fields
    today, but other names (a future field, a subclass's, a nested kwarg)
    would not be, and a value that is not there cannot leak.
    """
    clean = _without_secrets(args.to_dict())  # type: ignore[no-untyped-call, unused-ignore]
    return clean if isinstance(clean, dict) else {}


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_secrets(v) for k, v in value.items() if not _SECRET.search(str(k))}
    if isinstance(value, list | tuple):
        return [_without_secrets(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return strip_credentials(value)
    return value


def _model_config(model: object) -> dict[str, Any]:
    """The model's `config.to_dict()` (PretrainedConfig), or {} for other models."""
    to_dict = getattr(getattr(model, "config", None), "to_dict", None)
    if not callable(to_dict):
        return {}
    try:
        config = to_dict()
    except Exception:
        log.warning("traintrail: cannot read the model config", exc_info=True)
        return {}
    clean = _without_secrets(config)
    return clean if isinstance(clean, dict) else {}


class TraintrailCallback(TrainerCallback):  # type: ignore[misc, unused-ignore]  # Any if not installed
    """A TrainerCallback that records the run: config, logged metrics, checkpoints.

    Args:
        project: what the run belongs to.
        name: the run's label (default: `args.run_name` when the user set one).
        config: extra config recorded beside `args.*` and `model.*`.
        checkpoint: record each checkpoint the Trainer saves (hashing a large
            checkpoint costs disk reads on a worker thread, not training time).
        **start_run_kwargs: passed to `agent.sdk.start_run` (run_id, socket_path,
            stop_on: an alert named there saves a checkpoint and stops training).
    """

    def __init__(
        self,
        project: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        checkpoint: bool = True,
        **start_run_kwargs: Any,
    ) -> None:
        if not isinstance(project, str) or not project:
            raise TypeError("project must be a non-empty str")
        self.project = project
        self.name = name
        self.config = dict(config or {})
        self.checkpoint = checkpoint
        self.start_run_kwargs = start_run_kwargs
        self.run: traintrail.Run | None = None
        self._warned: set[str] = set()

    # -- Trainer hooks ---------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: object = None,
        **kwargs: Any,
    ) -> None:
        """Start the run with TrainingArguments and the model config as its config."""
        if self.run is not None and self.run.status is None:
            return  # train() called again on the same Trainer: one run
        try:
            config = {**self.config, "args": safe_training_args(args)}
            model_config = _model_config(model)
            if model_config:
                config["model"] = model_config
            name = self.name or _explicit_run_name(args)
            self.run = traintrail.start_run(
                self.project, name, config=config, **self.start_run_kwargs
            )
        except Exception:
            self._warn_once("start", "cannot start the run; training goes on unrecorded")

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """A `stop_on` alert: save a checkpoint and stop, as the Trainer's own stop does."""
        if self.run is not None and self.run.should_stop and not control.should_training_stop:
            self._warn_once("stop", f"stopping training: {self.run.stop_reason}")
            control.should_save = True
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Forward the numbers the Trainer logged (loss, learning_rate, grad_norm, eval_*)."""
        if self.run is None or not logs or not state.is_world_process_zero:
            return
        values = {k: v for k, v in logs.items() if _is_number(v)}
        if not values:
            return
        try:
            self.run.log(values, step=state.global_step)
        except (TypeError, ValueError):
            self._warn_once("log", "a logged value is not a scalar; those logs are skipped")

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Record the `checkpoint-<global_step>` directory the Trainer has just written."""
        if self.run is None or not self.checkpoint or not state.is_world_process_zero:
            return
        path = Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not path.exists():
            # A hyperparameter-search trial saves under a run-<n> subdirectory.
            self._warn_once("save", f"no checkpoint directory at {path}; not recorded")
            return
        try:
            self.run.log_checkpoint(path, step=state.global_step)
        except OSError:
            self._warn_once("save", f"cannot record checkpoint {path}")

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        """Finish the run (after the Trainer's last save, so every checkpoint is in it)."""
        self.finish()

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """End the run now; `finish("failed", error=...)` after a `train()` that raised."""
        if self.run is not None:
            self.run.finish(status, error=error)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("traintrail: %s", message, exc_info=sys.exc_info()[1] is not None)


def _is_number(value: object) -> bool:
    """int/float/bool or a tensor-like scalar (its `.item()` is left to the SDK)."""
    if isinstance(value, int | float):
        return True
    numel = getattr(value, "numel", None)
    return callable(numel) and numel() == 1 and callable(getattr(value, "item", None))


def _explicit_run_name(args: TrainingArguments) -> str | None:
    """args.run_name unless it is the Trainer's default (the output_dir)."""
    run_name = getattr(args, "run_name", None)
    if not run_name or run_name == args.output_dir:
        return None
    return str(run_name)
