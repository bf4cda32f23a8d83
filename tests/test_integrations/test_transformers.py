"""Transformers: a tiny BERT built from its config (no download), 6 steps, end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# Nothing here may reach the Hugging Face Hub: the model is built from a config.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from agent.sdk.hashing import hash_path  # noqa: E402
from agent.sdk.integrations.transformers import TraintrailCallback  # noqa: E402
from tests.procs import wait_for  # noqa: E402
from tests.test_integrations import finished_run, running_stack, series  # noqa: E402

pytestmark = pytest.mark.kafka

SECRET = "hf_dummysecret123"
MAX_STEPS, SAVE_STEPS = 6, 3


_Dataset: Any = torch.utils.data.Dataset


class RandomTokens(_Dataset):  # type: ignore[misc]
    """Fixed random token sequences with binary labels."""

    def __init__(self, n: int = 32, length: int = 12, vocab: int = 100) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, length), generator=gen)
        self.labels = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def _all_rows(collector: Any, run_id: str) -> str:
    """Every stored row that belongs to the run, as one JSON text."""
    rows = {}
    for table in ("runs", "run_finished", "metrics", "checkpoints", "datasets"):
        rows[table] = collector.sql(f"SELECT * FROM {table} FINAL WHERE run_id = '{run_id}'")
    rows["dead_letters"] = collector.sql("SELECT * FROM dead_letters FINAL")
    return json.dumps(rows, default=str)


def test_trainer_run_arrives_in_clickhouse_without_secrets(
    tmp_path: Path, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=100,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_steps=SAVE_STEPS,
        report_to=[],
        use_cpu=True,
        hub_token=SECRET,
        disable_tqdm=True,
        seed=0,
    )
    with running_stack(tmp_path, kafka_bootstrap, monkeypatch) as (collector, agent):
        callback = TraintrailCallback(
            "it-transformers", name="tiny-bert", socket_path=str(agent.socket)
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=RandomTokens(), callbacks=[callback]
        )
        trainer.train()
        assert callback.run is not None and callback.run.status == "finished"
        run_id = callback.run.run_id

        run = finished_run(collector, run_id)
        wait_for(
            "every checkpoint stored",
            lambda: len(collector.get(f"/runs/{run_id}")["checkpoints"]) == 2,
            timeout=60,
        )
        run = collector.get(f"/runs/{run_id}")
        assert run["status"] == "finished"
        assert run["project"] == "it-transformers" and run["name"] == "tiny-bert"

        # Config: TrainingArguments fields and the model's config.
        cfg = run["config"]
        assert cfg["args.max_steps"] == str(MAX_STEPS)
        assert cfg["args.learning_rate"] == "0.001"
        assert cfg["args.save_steps"] == str(SAVE_STEPS)
        assert cfg["args.output_dir"] == json.dumps(str(out))
        assert "args.average_tokens_across_devices" in cfg  # a setting, kept
        assert cfg["model.hidden_size"] == "32" and cfg["model.vocab_size"] == "100"
        assert cfg["model.model_type"] == '"bert"'
        # No secret-looking field, not even masked, and the secret nowhere.
        assert not [k for k in cfg if k.endswith("_token")]
        stored = _all_rows(collector, run_id)
        assert SECRET not in stored
        assert SECRET not in json.dumps(run)

        # The Trainer's logs: a loss point at every step (logging_steps=1).
        steps = list(range(1, MAX_STEPS + 1))
        assert [s for s, _ in series(collector, run_id, "loss")] == steps
        assert [s for s, _ in series(collector, run_id, "learning_rate")] == steps
        assert [s for s, _ in series(collector, run_id, "train_loss")] == [MAX_STEPS]

        # Checkpoints: the directories the Trainer wrote, hashed as on disk.
        ckpts = {c["step"]: c for c in run["checkpoints"]}
        assert sorted(ckpts) == [SAVE_STEPS, MAX_STEPS]
        for step, ckpt in ckpts.items():
            path = out / f"checkpoint-{step}"
            assert ckpt["path"] == str(path.resolve())
            digest, size = hash_path(path)
            assert (ckpt["sha256"], ckpt["size_bytes"]) == (digest, size)

    # Nor do the stack's own files: spools, logs, the store. (The Trainer's
    # checkpoints do: training_args.bin pickles TrainingArguments, token included.)
    for f in tmp_path.rglob("*"):
        if f.is_file() and out not in f.parents:
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET.encode() in (out / f"checkpoint-{MAX_STEPS}" / "training_args.bin").read_bytes()
