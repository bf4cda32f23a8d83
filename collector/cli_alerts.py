"""`traintrail alerts`: list alerts, preview the rules on a run or a file;
and the collector's alerting components built from its config."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import click

from collector.alert_sinks import AlertSinks, WebhookConfig
from collector.alerting import Alerting
from collector.config import CollectorConfig
from collector.metrics import CollectorMetrics
from collector.store import Store
from collector.watch import Watcher, rules_from_config

__all__ = ["alerting", "alerts"]


def alerting(
    config: CollectorConfig, store: Store, metrics: CollectorMetrics | None = None
) -> Alerting | None:
    """The watcher (state rebuilt from `store` per run) and its sinks, or
    None with `[alerts] enabled = false`."""
    from collector import queries
    from schemas import default_registry

    if not config.alerts_enabled:
        return None
    rules = rules_from_config(config)
    window = max(rules.spike.window, rules.grad_spike.window, config.alerts_divergence_window)

    def history(run_id: str, before_step: int) -> Any:
        return queries.watch_history(store, run_id, before_step, window)

    try:
        webhook = WebhookConfig(
            config.alerts_webhook_url,
            config.alerts_webhook_format,
            config.alerts_webhook_timeout_s,
            retry_max_s=config.alerts_webhook_retry_max_s,
            give_up_s=config.alerts_webhook_give_up_s,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    sinks = AlertSinks(
        default_registry(), config.kafka_topic_prefix, config.kafka_bootstrap, webhook
    )
    watcher = Watcher(rules, history, clock=time.time)
    if metrics is None:
        return Alerting(watcher, sinks)
    metrics.watch_alert_sinks(sinks)
    return Alerting(watcher, sinks, metrics.alerts)


@click.group()
def alerts() -> None:
    """Alerts the detectors raised, and previews of what they would raise."""


@alerts.command("list")
@click.option("--run", "run_id", default="", help="Only alerts of this run.")
@click.option("--state", default="", help="Only firing or only resolved alerts.")
@click.option("--limit", default=100, show_default=True, help="Most alerts, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def alerts_list(
    config: CollectorConfig, run_id: str, state: str, limit: int, as_json: bool
) -> None:
    """List alerts, newest first."""
    from collector.cli import _emit, _query
    from collector.render import alerts as render

    _emit(_query(config, "/alerts", run_id=run_id, state=state, limit=limit), as_json, render)


@alerts.command("test")
@click.argument("run_id", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Curves from elsewhere: CSV or Parquet with run, step, [time,] metric columns.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def alerts_test(
    config: CollectorConfig, run_id: str | None, path: Path | None, as_json: bool
) -> None:
    """Replay a stored run (RUN_ID) or a curves file through the configured
    detectors and show what they would have raised. Nothing is sent."""
    from collector.cli import _query
    from collector.preview import CurveFileError, preview_file, preview_points
    from collector.queries import jsonable
    from collector.render import alerts as render

    if (run_id is None) == (path is None):
        raise click.UsageError("give a RUN_ID or --file, not both")
    rules = rules_from_config(config)
    if path is not None:
        try:
            found = preview_file(rules, path)
        except CurveFileError as exc:
            raise click.ClickException(str(exc)) from None
    else:
        assert run_id is not None
        cols = _query(config, f"/runs/{run_id}/points")
        if not cols["step"]:
            raise click.ClickException(f"run {run_id!r} has no metric points")
        values = [float(v) for v in cols["value"]]  # "NaN"/"Infinity" strings back to floats
        found = preview_points(rules, run_id, cols["name"], cols["step"], cols["time_us"], values)
    rows = [
        {
            "time": dt.datetime.fromtimestamp(a["envelope"]["time_us"] / 1e6, dt.UTC),
            **{k: a[k] for k in ("severity", "state", "detector", "run_id", "metric", "step")},
            "value": a["value"],
            "message": a["message"],
        }
        for a in found
    ]
    if as_json:
        click.echo(json.dumps(jsonable(rows), indent=2))
    else:
        click.echo(render(rows) if rows else "no alerts")
