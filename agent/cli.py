"""`traintrail-agent`: the node daemon's command line."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

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
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the agent until SIGTERM/SIGINT.

    Checks and replays the spools, imports SDK spools left by processes that
    have ended, listens on the SDK socket, runs the GPU (NVML), host, inotify,
    auditd and auth-log sources that are configured and possible on this node,
    and produces everything to Kafka (idempotent, acks=all). Serves /metrics
    and /status. SIGHUP re-reads the config file and restarts the sources.
    SIGTERM: stop accepting, wait up to [agent] stop_timeout_s for deliveries;
    what is undelivered stays in the spool for the next start.
    """
    from agent.daemon import Agent
    from schemas.logs import configure_logging

    config: AgentConfig = ctx.obj
    config_path: Path | None = ctx.parent.params.get("config_path") if ctx.parent else None
    configure_logging(config.log_level, config.log_format)
    try:
        Agent(config, config_path).run_forever()
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("status")
@click.option("--url", help="Status endpoint; default: the running agent's, found in [spool] dir.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def status_cmd(config: AgentConfig, url: str | None, as_json: bool) -> None:
    """Spool depth, Kafka delivery, and each source's state of the running agent."""
    if url is None:
        marker = Path(config.spool_dir) / "agent.url"
        url = (
            marker.read_text().strip()
            if marker.exists()
            else f"http://{config.agent_metrics_host}:{config.agent_metrics_port}"
        )
    try:
        with urllib.request.urlopen(f"{url}/status", timeout=10) as resp:  # noqa: S310
            data = json.load(resp)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no agent answering at {url}: {exc}") from None
    click.echo(json.dumps(data, indent=2) if as_json else _status_text(data))


def _status_text(st: dict[str, Any]) -> str:
    k = st["kafka"]
    last = k["last_delivery"]
    lines = [
        f"agent on {st['node']}, up {st['uptime_s']:.0f} s",
        f"kafka     {'up' if k['up'] else 'DOWN'}; delivered {k['delivered']}, "
        f"failed {k['failed']}, last delivery "
        + (f"{time.time() - last:.1f} s ago" if last else "never"),
        f"events    accepted {st['events']['accepted']}, refused {st['events']['refused']}",
    ]
    if "ingest" in st:
        ing = st["ingest"]
        lines.append(
            f"ingest    {ing['queued_events']} events queued; the ingest thread committed "
            f"{ing['requests']} batches in {ing['commits']} writes"
        )
    lines += [
        f"encoder   {st.get('avro_writer', 'unknown')}",
        f"producer  {st.get('kafka_producer', 'unknown')}",
    ]
    for name, sp in st["spools"].items():
        lines.append(
            f"spool     {name}: {sp['pending']} records waiting, {sp['bytes']} of "
            f"{sp['max_bytes']} bytes in {sp['segments']} segments, dropped "
            f"{sp['dropped_records']}"
        )
    for name, src in st["sources"].items():
        state = "alive" if src["alive"] else "off"
        lines.append(
            f"source    {name}: {state}, emitted {src['emitted']}, errors {src['errors']}, "
            f"skipped {src['skipped']}" + (f" ({src['detail']})" if src["detail"] else "")
        )
    return "\n".join(lines)


@cli.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def check_config(config: AgentConfig, as_json: bool) -> None:
    """Validate the configuration and show every setting with its value in effect."""
    rows = effective(config)
    click.echo(json.dumps(rows, indent=2) if as_json else format_effective(rows))


def main() -> None:
    cli(prog_name="traintrail-agent")
