"""Lightning: a 2-layer MLP on random tensors, 2 epochs, recorded end to end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
lightning = pytest.importorskip("lightning.pytorch")

from agent.sdk.hashing import hash_path  # noqa: E402
from agent.sdk.integrations.lightning import TraintrailCallback  # noqa: E402
from tests.procs import wait_for  # noqa: E402
from tests.test_integrations import finished_run, running_stack, series  # noqa: E402

pytestmark = pytest.mark.kafka

BATCHES_PER_EPOCH = 4  # 64 samples, batch size 16
EPOCHS = 2


_Module: Any = lightning.LightningModule


class MLP(_Module):  # type: ignore[misc]
    def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)  # on_step only (the default in training_step)
        self.log("train_mse", loss, on_step=False, on_epoch=True)  # an epoch aggregate
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loader(seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(64, 1, generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def test_lightning_fit_arrives_in_clickhouse(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt_dir = tmp_path / "ckpt"
    with running_stack(tmp_path, kafka_bootstrap, monkeypatch) as (collector, agent):
        callback = TraintrailCallback(
            "it-lightning", name="mlp", config={"data": "random"}, socket_path=str(agent.socket)
        )
        trainer = lightning.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=EPOCHS,
            accumulate_grad_batches=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            num_sanity_val_steps=1,
            callbacks=[
                callback,
                lightning.callbacks.ModelCheckpoint(
                    dirpath=ckpt_dir, save_top_k=-1, filename="{epoch}-{step}"
                ),
            ],
        )
        trainer.fit(MLP(), _loader(0), _loader(1))
        assert callback.run is not None and callback.run.status == "finished"
        run_id = callback.run.run_id
        # The trainer is left as it was.
        assert "save_checkpoint" not in vars(trainer)

        run = finished_run(collector, run_id)
        last = BATCHES_PER_EPOCH * EPOCHS
        wait_for(
            "every checkpoint stored",
            lambda: len(collector.get(f"/runs/{run_id}")["checkpoints"]) == EPOCHS,
            timeout=60,
        )
        run = collector.get(f"/runs/{run_id}")

        assert run["status"] == "finished"
        assert run["project"] == "it-lightning" and run["name"] == "mlp"
        config = run["config"]
        assert config["hparams.hidden"] == "16" and config["hparams.lr"] == "0.05"
        assert config["trainer.max_epochs"] == str(EPOCHS)
        assert config["trainer.accumulate_grad_batches"] == "1"
        assert config["trainer.precision"] == '"32-true"'
        assert config["trainer.devices"] == "1"
        assert config["data"] == '"random"'

        # One point per optimizer step, for the batch loss and the step metric;
        # epoch and validation values once each, at the step they belong to.
        steps = list(range(1, last + 1))
        loss = series(collector, run_id, "loss")
        assert [s for s, _ in loss] == steps
        assert all(math.isfinite(v) for _, v in loss)
        train_loss = series(collector, run_id, "train_loss")
        assert [s for s, _ in train_loss] == steps
        assert [v for _, v in train_loss] == [v for _, v in loss]
        epoch_ends = [BATCHES_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
        assert [s for s, _ in series(collector, run_id, "train_mse")] == epoch_ends
        # The sanity check's validation is not recorded.
        assert [s for s, _ in series(collector, run_id, "val_loss")] == epoch_ends
        summary = run["finished"]["summary"]
        assert summary["loss"] == pytest.approx(loss[-1][1])

        # Checkpoints: the files ModelCheckpoint wrote, with their bytes' sha256.
        files = sorted(ckpt_dir.glob("*.ckpt"))
        names = [f"epoch={e}-step={s}.ckpt" for e, s in enumerate(epoch_ends)]
        assert [f.name for f in files] == names
        stored = {c["path"]: c for c in run["checkpoints"]}
        assert set(stored) == {str(f.resolve()) for f in files}
        for f, step in zip(files, epoch_ends, strict=True):
            digest, size = hash_path(f)
            assert stored[str(f.resolve())]["sha256"] == digest
            assert stored[str(f.resolve())]["size_bytes"] == size
            assert stored[str(f.resolve())]["step"] == step


def test_lightning_failure_marks_the_run_failed(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exploding(MLP):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 2:
                raise RuntimeError("boom at step 2")
            return super().training_step(batch, batch_idx)

    with running_stack(tmp_path, kafka_bootstrap, monkeypatch) as (collector, agent):
        callback = TraintrailCallback("it-lightning", socket_path=str(agent.socket))
        trainer = lightning.Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=tmp_path,
            callbacks=[callback],
        )
        with pytest.raises(RuntimeError, match="boom"):
            trainer.fit(Exploding(), _loader(0))
        assert callback.run is not None
        run = finished_run(collector, callback.run.run_id)
        assert run["status"] == "failed"
        assert run["finished"]["error"] == "RuntimeError: boom at step 2"
        assert [s for s, _ in series(collector, callback.run.run_id, "loss")] == [1, 2]
