"""The watch: detectors fed from decoded messages, alert identity, cooldown,
restart state, hardware findings, and the preview of files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector.hardware import HardwareConfig
from collector.preview import preview_file
from collector.watch import AlertRules, Watcher
from schemas import Decoded, decode, default_registry, encode
from schemas.gpu_packed import pack
from tests.samples import body, envelope, record
from tests.test_collector.kit import T0, curve_messages


def _curve(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    return 2.0 * np.exp(-steps / 500) + 0.3 + rng.normal(0, 0.02, n)


def _messages(
    run_id: str, loss: np.ndarray, acc: np.ndarray | None = None, per: int = 100
) -> list[Decoded]:
    series = {"loss": loss} if acc is None else {"loss": loss, "acc": acc}
    reg = default_registry()
    return [decode(reg, m) for m in curve_messages(run_id, series, per)]


def _feed(watcher: Watcher, messages: list[Decoded]) -> list[dict[str, Any]]:
    return [a for m in messages for a in watcher.observe(m)]


def _what(alerts: list[dict[str, Any]]) -> list[tuple[str, str, str | None, int | None]]:
    return [(a["detector"], a["state"], a["metric"], a["step"]) for a in alerts]


def test_a_spike_is_one_alert_and_one_resolve_with_stable_identity() -> None:
    loss = _curve(2000)
    loss[1200:1205] *= 6
    first = _feed(Watcher(), _messages("r1", loss))
    assert _what(first) == [("spike", "firing", "loss", 1200), ("spike", "resolved", "loss", 1205)]
    alert = first[0]
    assert alert["severity"] == "warning" and alert["run_id"] == "r1"
    assert alert["value"] == loss[1200] and alert["baseline"] is not None
    assert alert["params"]["z"] == "8.0" and "loss jumped" in alert["message"]
    again = _feed(Watcher(), _messages("r1", loss))  # a replay: the same identities
    assert [a["envelope"]["event_id"] for a in again] == [a["envelope"]["event_id"] for a in first]
    encode(default_registry(), "Alert", alert)  # a valid Alert record


def test_a_learning_rate_jump_is_an_alert_on_the_learning_rate() -> None:
    """HF Trainer logs `learning_rate`, Lightning `lr-<optimizer>`: both are
    watched for a jump, by default, next to the loss."""
    loss = _curve(1000)
    lr = np.full(1000, 1e-3)
    lr[600] = 5e-2  # x50 for one step: a scheduler bug
    messages = [
        decode(default_registry(), m)
        for m in curve_messages("r1", {"loss": loss, "learning_rate": lr, "lr-Adam": lr})
    ]
    alerts = _feed(Watcher(), messages)
    assert sorted(_what(alerts)) == [
        ("lr_jump", "firing", "learning_rate", 600),
        ("lr_jump", "firing", "lr-Adam", 600),
        ("lr_jump", "resolved", "learning_rate", 601),
        ("lr_jump", "resolved", "lr-Adam", 601),
    ]
    assert alerts[0]["severity"] == "warning" and "50x the highest" in alerts[0]["message"]
    quiet = AlertRules(lr_metrics=())
    assert _feed(Watcher(quiet), messages) == []


def test_nan_in_any_metric_even_unwatched() -> None:
    loss = _curve(600)
    acc = np.linspace(0, 1, 600)
    acc[400] = math.nan
    alerts = _feed(Watcher(), _messages("r1", loss, acc))
    assert _what(alerts) == [
        ("nonfinite", "firing", "acc", 400),
        ("nonfinite", "resolved", "acc", 401),
    ]
    assert alerts[0]["severity"] == "critical" and alerts[0]["value"] is None


def test_cooldown_mutes_an_episode_soon_after_the_last() -> None:
    loss = _curve(3000)
    loss[1000] *= 6
    loss[1100] *= 6  # 100 s later: inside the 300 s cooldown
    loss[2000] *= 6  # long after
    alerts = _feed(Watcher(AlertRules(cooldown_s=300)), _messages("r1", loss))
    assert [a["step"] for a in alerts if a["state"] == "firing"] == [1000, 2000]
    assert [a["step"] for a in alerts if a["state"] == "resolved"] == [1001, 2001]


def test_restart_mid_episode_neither_repeats_nor_misses() -> None:
    loss = _curve(3000)
    loss[1450:1600] *= 6  # an episode across the restart at step 1500
    loss[2200] *= 6  # a spike soon after: needs the rebuilt baseline
    messages = _messages("r1", loss)
    rules = AlertRules(cooldown_s=0)
    whole = _feed(Watcher(rules), messages)
    before = _feed(Watcher(rules), messages[:15])
    assert ("spike", "firing", "loss", 1450) in _what(before)

    def history(run_id: str, before_step: int) -> Any:
        assert (run_id, before_step) == ("r1", 1500)
        steps = list(range(before_step))
        points = {"loss": (steps, [float(v) for v in loss[:before_step]], before_step)}
        open_ = {(a["metric"], a["detector"]) for a in before if a["state"] == "firing"}
        open_ -= {(a["metric"], a["detector"]) for a in before if a["state"] == "resolved"}
        return points, [
            {"metric": m, "detector": d, "last_state": "firing", "last_resolved": None}
            for m, d in open_
        ]

    after = _feed(Watcher(rules, history), messages[15:])
    assert _what(before) + _what(after) == _what(whole)
    assert ("spike", "resolved", "loss", 1600) in _what(after)
    assert ("spike", "firing", "loss", 2200) in _what(after)
    # Without the rebuild the new process would never close the open episode.
    fresh = _feed(Watcher(rules), messages[15:])
    assert ("spike", "resolved", "loss", 1600) not in _what(fresh)


def _gpu(t_s: float, **fields: Any) -> Decoded:
    reg = default_registry()
    rec = record("GpuSample", "r1")
    rec["envelope"]["time_us"] = T0 + int(t_s * 1e6)
    rec.update(fields)
    return decode(reg, encode(reg, "GpuSample", rec))


def test_hardware_xid_ecc_throttle_idle_and_silence() -> None:
    reg = default_registry()
    watcher = Watcher(AlertRules(hardware=HardwareConfig(throttle_hold_s=5, idle_hold_s=5)))
    ev = record("GpuEvent", "r1")
    ev.update(kind="xid", code=79, run_ids=["r1"])
    ev["envelope"]["time_us"] = T0
    xid = watcher.observe(decode(reg, encode(reg, "GpuEvent", ev)))
    assert _what(xid) == [("xid", "firing", None, None)]
    assert xid[0]["severity"] == "critical" and "XID error 79" in xid[0]["message"]

    train = [{"pid": 1, "used_memory_bytes": 1, "run_id": "r1"}]
    found = []
    for t in range(12):
        found += watcher.observe(
            _gpu(
                t,
                ecc_uncorrected=0 if t < 3 else 2,
                throttle_reasons=0x40 if 2 <= t < 9 else 0,
                utilization_gpu=97 if t < 4 else 1,
                processes=train,
            )
        )
    got = [(a["detector"], a["state"]) for a in found]
    assert got.count(("ecc_uncorrectable", "firing")) == 1
    assert got.count(("throttle", "firing")) == 1 and got.count(("throttle", "resolved")) == 1
    assert got.count(("gpu_idle", "firing")) == 1
    assert all(a["run_id"] == "r1" for a in found)
    node = found[0]["envelope"]["node"]
    silent = watcher.tick(T0 + 200 * 1_000_000)
    assert _what(silent) == [("node_silent", "firing", None, None)] and node in silent[0]["message"]
    assert watcher.tick(T0 + 300 * 1_000_000) == []  # one alert per silence
    back = watcher.observe(_gpu(301, processes=train))
    assert ("node_silent", "resolved") in [(a["detector"], a["state"]) for a in back]


def _tick(t: int) -> list[dict[str, Any]]:
    """Two GPUs' samples at second `t`: GPU-a throttled 5..20 and 62..79 (its
    end seen in an otherwise calm message), its uncorrectable ECC count rising at
    12 and 130; GPU-b, held by run r1 (and a process of no run), idle 25..35 and
    45..55, without a throttle reading. Calm 81..129 and 140..159."""
    a = {
        **body("GpuSample", "r1"),
        "gpu_uuid": "GPU-a",
        "index": 0,
        "throttle_reasons": 0x40 if 5 <= t <= 20 or 62 <= t <= 79 else 0,
        "ecc_uncorrected": 0 if t < 12 else 2 if t < 130 else 3,
    }
    b = {
        **body("GpuSample", "r1"),
        "gpu_uuid": "GPU-b",
        "index": 1,
        "throttle_reasons": None,
        "utilization_gpu": 1 if 25 <= t <= 35 or 45 <= t <= 55 else 90,
        "processes": [
            {"pid": 7, "used_memory_bytes": None, "run_id": None},
            {"pid": 8, "used_memory_bytes": 3, "run_id": "r1"},
        ],
    }
    return [a, b]


def _as_gpu_sample(t: int, sample: dict[str, Any]) -> Decoded:
    reg = default_registry()
    env = {**envelope("gpu/node-1"), "time_us": T0 + t * 1_000_000}
    return decode(reg, encode(reg, "GpuSample", {**sample, "envelope": env}))


def _as_gpu_samples(ticks: list[int]) -> Decoded:
    """The ticks' samples in one message, latest tick first: the watch must sort."""
    reg = default_registry()
    order = sorted(ticks, reverse=True)
    samples = [s for t in order for s in _tick(t)]
    times = [T0 + t * 1_000_000 for t in order for _ in range(2)]
    env = {**envelope("gpu/node-1"), "time_us": max(times, default=T0 + 10**9)}
    return decode(reg, encode(reg, "GpuSamples", {**pack(samples, times), "envelope": env}))


@pytest.mark.parametrize("ticks", [4, 20])  # 8 samples a message; 40: the vectorized scan
def test_gpu_samples_raise_what_the_same_samples_raise_one_message_each(ticks: int) -> None:
    rules = AlertRules(hardware=HardwareConfig(throttle_hold_s=5, idle_hold_s=5))
    one_each, packed = Watcher(rules), Watcher(rules)
    seconds = list(range(160))
    expected = _feed(one_each, [_as_gpu_sample(t, s) for t in seconds for s in _tick(t)])
    messages = [_as_gpu_samples(seconds[i : i + ticks]) for i in range(0, 160, ticks)]
    assert _feed(packed, messages) == expected
    ecc = [a["message"] for a in expected if a["detector"] == "ecc_uncorrectable"]
    assert [m.rsplit(": ", 1)[1] for m in ecc] == ["0 -> 2", "2 -> 3"]
    assert [a["detector"] for a in expected].count("throttle") == 4  # 2 episodes, 2 alerts each
    assert [a["detector"] for a in expected].count("gpu_idle") == 4
    got = {(a["detector"], a["state"], a["params"].get("gpu_uuid")) for a in expected}
    assert got == {
        ("throttle", "firing", "GPU-a"),
        ("throttle", "resolved", "GPU-a"),
        ("ecc_uncorrectable", "firing", "GPU-a"),
        ("gpu_idle", "firing", "GPU-b"),
        ("gpu_idle", "resolved", "GPU-b"),
    }
    assert all(a["run_id"] == "r1" for a in expected)  # the runs of the GPUs' processes

    assert one_each.tick(T0 + 260 * 1_000_000) == []  # 101 s after the last sample
    assert packed.tick(T0 + 260 * 1_000_000) == []  # the last sample's, not its message's
    silent = one_each.tick(T0 + 300 * 1_000_000)  # silence counts GpuSamples too
    assert [a["detector"] for a in silent] == ["node_silent"]
    assert packed.tick(T0 + 300 * 1_000_000) == silent
    back = one_each.observe(_as_gpu_sample(400, _tick(400)[0]))
    assert [(a["detector"], a["state"]) for a in back] == [("node_silent", "resolved")]
    assert packed.observe(_as_gpu_samples([400])) == back
    assert packed.observe(_as_gpu_samples([])) == []  # an empty message: nothing to judge


def test_preview_of_csv_and_parquet_files(tmp_path: Path) -> None:
    loss = _curve(1500, seed=3)
    loss[900] *= 8
    rows = ["run,step,loss,acc"] + [
        f"a,{s},{'nan' if s == 1200 else loss[s]},{'' if s % 2 else s / 1500}" for s in range(1500)
    ]
    csv = tmp_path / "curves.csv"
    csv.write_text("\n".join(rows) + "\n")
    found = preview_file(AlertRules(), csv)
    assert _what(found) == [
        ("spike", "firing", "loss", 900),
        ("spike", "resolved", "loss", 901),
        ("nonfinite", "firing", "loss", 1200),
        ("nonfinite", "resolved", "loss", 1201),
    ]
    table = pa.table({"step": np.arange(1500), "loss": loss})
    pq.write_table(table, tmp_path / "b.parquet")
    found = preview_file(AlertRules(), tmp_path / "b.parquet")
    assert [(a["run_id"], a["step"]) for a in found] == [("b", 900), ("b", 901)]


def test_a_backlog_read_late_is_not_a_stall_but_silence_after_it_is() -> None:
    """Event times years old (a collector catching up, a backfill): silence is
    counted from arrival, the usual step interval from event time."""
    now = [2_000_000_000.0]
    watcher = Watcher(AlertRules(), clock=lambda: now[0])
    _feed(watcher, _messages("r1", _curve(600)))  # steps a second apart, in 2023
    assert watcher.tick(int((now[0] + 5) * 1e6)) == []
    now[0] += 100  # then nothing for 100 s: over 60 s and 10x the 1 s cadence
    stalled = watcher.tick(int(now[0] * 1e6))
    assert _what(stalled) == [("stall", "firing", None, 599)]
    assert watcher.tick(int((now[0] + 50) * 1e6)) == []  # one alert per stall
