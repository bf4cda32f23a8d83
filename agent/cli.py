"""`traintrail-agent`: the node daemon's command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.config import AgentConfig, load_config
from agent.errors import AgentError
from schemas.settings import SettingsError, effective, format_effective

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="TRAINTRAIL_AGENT_CONFIG",
    help="TOML config file (also TRAINTRAIL_AGENT_CONFIG). Env TRAINTRAIL_* overrides it.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """traintrail node agent: SDK socket → disk spool → Kafka."""
    try:
        ctx.obj = load_config(config_path)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("run")
@click.pass_obj
def run(config: AgentConfig) -> None:
    """Run the agent until SIGTERM/SIGINT.

    Replays the spool, imports SDK spools left by processes that have ended,
    listens on the SDK socket, and produces everything to Kafka (idempotent,
    acks=all). On SIGTERM: stop accepting, wait up to [agent] stop_timeout_s for deliveries;
    what is undelivered stays in the spool for the next start.
    """
    from agent.daemon import Agent
    from schemas.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    try:
        Agent(config).run_forever()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def check_config(config: AgentConfig, as_json: bool) -> None:
    """Validate the configuration and show every setting with its value in effect."""
    rows = effective(config)
    click.echo(json.dumps(rows, indent=2) if as_json else format_effective(rows))


def main() -> None:
    cli(prog_name="traintrail-agent")
