"""The README and --help tell the truth about settings and commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import cli as agent_cli
from agent.config import AgentConfig
from collector.cli import cli as collector_cli
from collector.config import CollectorConfig
from schemas.settings import describe

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("cls", [AgentConfig, CollectorConfig])
def test_every_setting_is_in_the_readme_with_its_default(cls: type) -> None:
    for row in describe(cls):
        line = f"| `{row['toml']}` | `{row['env']}` | `{row['default']}` |"
        assert line in README, row["env"]


@pytest.mark.parametrize(
    ("cli", "args"),
    [
        (collector_cli, ["collector", "run"]),
        (collector_cli, ["migrate"]),
        (collector_cli, ["runs", "list"]),
        (collector_cli, ["runs", "show"]),
        (collector_cli, ["metrics"]),
        (collector_cli, ["lineage"]),
        (collector_cli, ["dlq", "list"]),
        (collector_cli, ["alerts", "list"]),
        (collector_cli, ["alerts", "test"]),
        (collector_cli, ["dlq", "replay"]),
        (collector_cli, ["kafka", "init"]),
        (collector_cli, ["schemas", "check"]),
        (agent_cli, ["run"]),
        (agent_cli, ["check-config"]),
    ],
)
def test_help_explains_every_option(cli: object, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    options = [line.strip() for line in result.output.splitlines() if line.strip().startswith("--")]
    for line in options:
        assert len(line.split(None, 1)) == 2 or "--json" in line, f"undocumented: {line}"
    if args[-1] in {"list", "show", "metrics", "lineage", "migrate", "check-config"}:
        assert "--json" in result.output


def test_bad_config_value_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[collector]\nbatch_max_messages = 'many'\n")
    result = CliRunner().invoke(collector_cli, ["--config", str(config), "config"])
    assert result.exit_code != 0
    assert "[collector] batch_max_messages: expected int, got 'many'" in result.output


@pytest.mark.parametrize("key", ["poll_seconds", "batch_max_seconds"])
def test_a_wait_of_zero_is_refused_by_name(tmp_path: Path, key: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[collector]\n{key} = 0\n")
    result = CliRunner().invoke(collector_cli, ["--config", str(config), "config"])
    assert result.exit_code != 0
    assert f"[collector] {key} must be above 0, got 0" in result.output


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[spool]\nfsinc = true\n")
    result = CliRunner().invoke(agent_cli, ["--config", str(config), "check-config"])
    assert result.exit_code != 0
    assert "unknown setting [spool] fsinc" in result.output


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.config import load_config

    config = tmp_path / "c.toml"
    config.write_text("[kafka]\nbootstrap = 'file:1'\npartitions = 6\n")
    monkeypatch.setenv("TRAINTRAIL_KAFKA_BOOTSTRAP", "env:2")
    loaded = load_config(config)
    assert loaded.kafka_bootstrap == "env:2"
    assert loaded.kafka_partitions == 6


def test_config_output_never_shows_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINTRAIL_CLICKHOUSE_DSN", "http://writer:s3cr3t@ch:8123/traintrail")
    result = CliRunner().invoke(collector_cli, ["config", "--json"])
    assert result.exit_code == 0
    assert "s3cr3t" not in result.output
    assert "writer:***@ch" in result.output
