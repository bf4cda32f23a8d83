"""The ClickHouse connection: one clickhouse-connect client for both backends.

`chdb:///path` is the embedded engine (one process per data directory, so a
collector that owns it serves queries to others over its HTTP API);
`http(s)://user:pass@host:port/db` is a ClickHouse server. The SQL in this
project is written to be valid on both.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector.errors import ConfigError, StoreError
from schemas.settings import redact_url

__all__ = ["Store", "connect", "is_embedded", "redact_dsn"]


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for logs and error messages."""
    return redact_url(dsn)


# optimize_on_insert=0: a ReplacingMergeTree insert would otherwise collapse
# rows of equal key within the block as a merge would, a pass over every
# block (a fifth of a metrics insert here) for what only a redelivered message
# inside one batch could produce. Queries read with FINAL, which collapses
# copies wherever they are (same block, other parts, other collectors); that
# is the exactly-once mechanism (collector/pipeline.py), not this.
_INSERT_SETTINGS = {"optimize_on_insert": 0}


@dataclass
class Store:
    """A clickhouse-connect client behind a lock.

    chDB's client is not safe to share between threads, and the collector
    shares one between its ingest loop and its query API.
    """

    client: Any
    database: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            try:
                return self.client.command(sql, parameters=parameters)
            except Exception as exc:
                raise StoreError(f"{_first_line(exc)}") from exc

    def query(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        *,
        readonly: bool = False,
    ) -> list[dict[str, Any]]:
        settings = {"readonly": 1} if readonly else None
        with self._lock:
            try:
                result = self.client.query(sql, parameters=parameters, settings=settings)
            except Exception as exc:
                raise StoreError(f"{_first_line(exc)}") from exc
        return list(result.named_results())

    def insert_arrow(self, table: str, data: Any) -> None:
        with self._lock:
            try:
                self.client.insert_arrow(table, data, settings=_INSERT_SETTINGS)
            except Exception as exc:
                raise StoreError(f"insert into {table}: {_first_line(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            self.client.close()


def connect(dsn: str, database: str = "traintrail") -> Store:
    """Open the store and make sure its database exists."""
    import clickhouse_connect  # the collector's dependency; keep the import lazy for the CLI

    if is_embedded(dsn):
        path = dsn.removeprefix("chdb://")
        if not path.startswith("/"):
            raise ConfigError(f"clickhouse dsn {dsn!r}: use chdb:///absolute/path")
        Path(path).mkdir(parents=True, exist_ok=True)
    elif not dsn.startswith(("http://", "https://")):
        raise ConfigError(
            f"clickhouse dsn {redact_dsn(dsn)!r}: expected chdb:///path or http(s)://"
        )
    db_in_dsn = urlsplit(dsn).path.strip("/") if not is_embedded(dsn) else ""
    database = db_in_dsn or database
    try:
        bootstrap = clickhouse_connect.get_client(dsn=_without_database(dsn))
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {_ident(database)}")
        client = clickhouse_connect.get_client(dsn=_without_database(dsn), database=database)
    except ConfigError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open {redact_dsn(dsn)}: {_first_line(exc)}") from exc
    return Store(client, database)


def _without_database(dsn: str) -> str:
    if is_embedded(dsn):
        return dsn
    return urlsplit(dsn)._replace(path="").geturl()


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"database name {name!r}: letters, digits and _ only")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
