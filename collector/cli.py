"""`traintrail`: run the collector, apply migrations, and answer queries.

Query commands ask the collector's HTTP API when the store is embedded
(chDB: only the collector process may open it) and ClickHouse directly when
the DSN names a server. Both paths run the same named queries.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlencode

import click

from collector.config import CollectorConfig, load_config
from collector.errors import CollectorError, QueryError
from collector.store import is_embedded, redact_dsn
from schemas.settings import SettingsError, effective, format_effective

__all__ = ["main"]

Fetch = Callable[[str, dict[str, Any]], Any]

_CONFIG_HELP = "TOML config file (also TRAINTRAIL_CONFIG). Env TRAINTRAIL_* overrides it."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    envvar="TRAINTRAIL_CONFIG",
    help=_CONFIG_HELP,
)
@click.option("--dsn", help="ClickHouse DSN, overrides [clickhouse] dsn.")
@click.option(
    "--api-url", help="Query API of an embedded-store collector, e.g. http://127.0.0.1:8787."
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, dsn: str | None, api_url: str | None) -> None:
    """traintrail: training telemetry from Kafka into ClickHouse, and the queries over it."""
    try:
        ctx.obj = load_config(config_path, clickhouse_dsn=dsn, api_url=api_url)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


# -- collector ---------------------------------------------------------------


@cli.group()
def collector() -> None:
    """The Kafka → ClickHouse materializer."""


@collector.command("run")
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    help="Write the query API URL here once consuming (for scripts waiting on start).",
)
@click.pass_obj
def collector_run(config: CollectorConfig, ready_file: Path | None) -> None:
    """Consume the topics, store every event, serve the read-only query API.

    Applies pending migrations and creates missing topics first. SIGTERM or
    SIGINT finishes the batch in hand, commits it and exits.
    """
    from collector.api import start_api
    from collector.deadletters import DeadLetters
    from collector.migrate import apply_retention, migrate
    from collector.pipeline import Pipeline, make_consumer
    from collector.store import connect
    from collector.topics import provision
    from schemas import default_registry
    from schemas.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    import structlog

    log = structlog.get_logger("traintrail.collector")
    try:
        store = connect(config.clickhouse_dsn, config.clickhouse_database)
        applied = migrate(store)
        apply_retention(store, config.storage_raw_hardware_ttl_days)
        log.info(
            "store ready",
            dsn=redact_dsn(config.clickhouse_dsn),
            migrations_applied=[m.version for m in applied],
        )
        topics = provision(config)
        if topics.created or topics.retention_set:
            log.info("topics provisioned", created=topics.created, retention=topics.retention_set)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # Kafka admin errors: one line, not a traceback
        raise click.ClickException(f"kafka {config.kafka_bootstrap}: {exc}") from None
    # Served for a server DSN too: the same read-only queries, one place to ask.
    dead_letters = (
        DeadLetters(config.kafka_bootstrap, config.dead_letter_topic())
        if config.collector_dead_letter_topic
        else None
    )
    pipeline = Pipeline(
        config,
        store,
        default_registry(),
        make_consumer(config),
        dead_letters=dead_letters,
    )
    pipeline.alerting = alerting(config, store, pipeline.metrics)
    api = start_api(store, config.api_host, config.api_port, metrics=pipeline.metrics.render)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        pipeline.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if ready_file is not None:
        ready_file.write_text(api.url + "\n")
    try:
        pipeline.run()
    finally:
        api.stop()
        store.close()


@cli.command("migrate")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def migrate_cmd(config: CollectorConfig, as_json: bool) -> None:
    """Apply pending ClickHouse migrations (idempotent) and list what ran."""
    from collector.migrate import migrate
    from collector.store import connect

    try:
        store = connect(config.clickhouse_dsn, config.clickhouse_database)
        applied = [f"{m.version:04d}_{m.name}" for m in migrate(store)]
        store.close()
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    _emit(
        {"applied": applied},
        as_json,
        lambda d: "\n".join(d["applied"]) or "nothing to apply: up to date",
    )


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def config_cmd(config: CollectorConfig, as_json: bool) -> None:
    """Show every setting: TOML key, env var, default, and the value in effect."""
    _emit(effective(config), as_json, format_effective)


# -- queries -------------------------------------------------------------------


def _fetcher(config: CollectorConfig) -> Fetch:
    if is_embedded(config.clickhouse_dsn):
        base = config.query_api_url()

        def fetch_http(path: str, params: dict[str, Any]) -> Any:
            query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
            url = f"{base}{path}" + (f"?{query}" if query else "")
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - http(s) only
                    return json.load(resp)
            except urllib.error.HTTPError as exc:
                detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
                raise QueryError(f"{path}: {detail}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise QueryError(
                    f"query API {base} unreachable ({exc}); the embedded store is read through "
                    "a running `traintrail collector run`"
                ) from None

        return fetch_http

    from collector.api import route
    from collector.store import connect

    store = connect(config.clickhouse_dsn, config.clickhouse_database)

    def fetch_direct(path: str, params: dict[str, Any]) -> Any:
        return route(store, path, {k: [str(v)] for k, v in params.items() if v is not None})

    return fetch_direct


def _query(config: CollectorConfig, path: str, **params: Any) -> Any:
    try:
        return _fetcher(config)(path, params)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _emit(data: Any, as_json: bool, human: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2) if as_json else human(data))


@cli.group()
def runs() -> None:
    """Training runs."""


@runs.command("list")
@click.option("--limit", default=50, show_default=True, help="Most runs to list, newest first.")
@click.option("--project", default="", help="Only runs of this project.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def runs_list(config: CollectorConfig, limit: int, project: str, as_json: bool) -> None:
    """List runs, newest first, with their status."""
    from collector.render import runs_table

    _emit(_query(config, "/runs", limit=limit, project=project), as_json, runs_table)


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def runs_show(config: CollectorConfig, run_id: str, as_json: bool) -> None:
    """A run's context, datasets, checkpoints, status and metric summary."""
    from collector.render import run_details

    _emit(_query(config, f"/runs/{quote(run_id, safe='')}"), as_json, run_details)


@cli.command("metrics")
@click.argument("run_id")
@click.option("--name", default="", help="Metric name; without it, a summary of every metric.")
@click.option("--limit", default=100_000, show_default=True, help="Most points to return.")
@click.option("--every", default=1, show_default=True, help="Only steps divisible by this.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def metrics_cmd(
    config: CollectorConfig, run_id: str, name: str, limit: int, every: int, as_json: bool
) -> None:
    """A metric's points over steps, or every metric's summary."""
    from collector.render import metric_points, metric_summary

    path = f"/runs/{quote(run_id, safe='')}/metrics"
    data = _query(config, path, name=name, limit=limit, every=every)
    _emit(data, as_json, metric_points if name else metric_summary)


@cli.command("lineage")
@click.argument("sha256")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def lineage_cmd(config: CollectorConfig, sha256: str, as_json: bool) -> None:
    """The run(s) that wrote a checkpoint with this sha256, with their full context."""
    from collector.render import lineage

    _emit(_query(config, f"/lineage/{quote(sha256, safe='')}"), as_json, lineage)


@cli.group()
def dlq() -> None:
    """Dead letters: messages that could not be stored, and why."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, help="Most dead letters, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def dlq_list(config: CollectorConfig, limit: int, as_json: bool) -> None:
    """List dead letters with source position and reason."""
    from collector.render import dead_letters

    _emit(_query(config, "/dead-letters", limit=limit), as_json, dead_letters)


@dlq.command("replay")
@click.option("--error-type", default="", help="Only dead letters of this error type.")
@click.option("--topic", default="", help="Only dead letters from this source topic.")
@click.option("--limit", default=100_000, show_default=True, help="Most dead letters examined.")
@click.option("--dry-run", is_flag=True, help="Decode and report; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def dlq_replay(
    config: CollectorConfig, error_type: str, topic: str, limit: int, dry_run: bool, as_json: bool
) -> None:
    """After a fix (a schema added, a writer corrected): send the dead letters that
    now decode and validate back to their source topic. Stored rows carry the
    event identity, so a second replay stores nothing twice."""
    from confluent_kafka import Producer

    from collector.deadletters import replay
    from collector.validate import Limits
    from schemas import default_registry

    rows = _query(config, "/dead-letters", raw=1, error_type=error_type, topic=topic, limit=limit)
    producer = None
    if not dry_run:
        producer = Producer(
            {"bootstrap.servers": config.kafka_bootstrap, "enable.idempotence": True}
        )
    limits = Limits(config.collector_max_string_bytes, config.collector_max_future_s)
    try:
        result = replay(rows, default_registry(), producer, limits)
    except TimeoutError as exc:
        raise click.ClickException(f"kafka {config.kafka_bootstrap}: {exc}") from None
    data = {"examined": result.examined, "sent": result.sent, "still_bad": result.still_bad,
            "dry_run": dry_run}  # fmt: skip
    verb = "would send" if dry_run else "sent"
    _emit(
        data,
        as_json,
        lambda d: (
            f"examined {d['examined']}, {verb} {d['sent']} to their topics; still bad: "
            + (", ".join(f"{k} {v}" for k, v in d["still_bad"].items()) or "none")
        ),
    )


@cli.group("kafka")
def kafka_group() -> None:
    """Kafka topics of this deployment."""


@kafka_group.command("init")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def kafka_init(config: CollectorConfig, as_json: bool) -> None:
    """Create the topics ([kafka] partitions, replication, retention_hours) and set
    the retention of existing ones; idempotent. Partition counts are never changed."""
    from collector.topics import provision

    try:
        report = provision(config)
    except Exception as exc:  # Kafka admin errors: one line, not a traceback
        raise click.ClickException(f"kafka {config.kafka_bootstrap}: {exc}") from None
    data = {"created": report.created, "existing": report.existing,
            "retention_set": report.retention_set}  # fmt: skip
    _emit(
        data,
        as_json,
        lambda d: "\n".join(
            [f"created   {t}" for t in d["created"]]
            + [f"exists    {t} ({n} partitions)" for t, n in d["existing"].items()]
            + [f"retention {t} set" for t in d["retention_set"]]
        ),
    )


@cli.group("schemas")
def schemas_group() -> None:
    """The Avro schema registry (schemas/avro)."""


@schemas_group.command("check")
@click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="A schemas/avro directory to check instead of the installed one.",
)
@click.pass_obj
def schemas_check(_config: CollectorConfig, root: Path | None) -> None:
    """Fail unless every historical version of every type resolves into its current one."""
    from schemas import Registry, default_registry
    from schemas.compat import check_registry

    registry = Registry.load(root) if root is not None else default_registry()
    problems = check_registry(registry)
    versions = sum(len(v) for v in registry.versions.values())
    if problems:
        for problem in problems:
            click.echo(f"incompatible: {problem}", err=True)
        raise click.ClickException(f"{len(problems)} incompatible change(s)")
    click.echo(f"ok: {len(registry.versions)} types, {versions} versions, all resolvable")


from collector.cli_alerts import alerting, alerts  # noqa: E402 (it uses the helpers above)

cli.add_command(alerts)


def main() -> None:
    cli(prog_name="traintrail")


if __name__ == "__main__":  # pragma: no cover
    main()
