"""Apply `schemas/clickhouse/NNNN_name.sql` in order, once each.

Applied versions are recorded with the file's checksum in `schema_migrations`.
A migration whose file changed after it was applied is an error, not a silent
skip: the stored data was shaped by the old text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from collector.errors import MigrationError, StoreError
from collector.store import Store

__all__ = [
    "MIGRATIONS_DIR",
    "RAW_HARDWARE_TABLES",
    "Migration",
    "applied",
    "apply_retention",
    "load_migrations",
    "migrate",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: list[str]
    checksum: str


def load_migrations(root: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(root.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        text = path.read_text()
        statements = [s.strip() for s in re.split(r"(?m)^;\s*$", text) if _has_sql(s)]
        checksum = hashlib.sha256(text.encode()).hexdigest()
        found.append(Migration(int(match.group(1)), match.group(2), statements, checksum))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {root}")
    return found


def applied(store: Store) -> dict[int, str]:
    store.command(_LEDGER)
    rows = store.query("SELECT version, checksum FROM schema_migrations ORDER BY version")
    return {int(r["version"]): str(r["checksum"]) for r in rows}


def migrate(store: Store, root: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply what is missing; return what was applied now."""
    done = applied(store)
    newly = []
    for migration in load_migrations(root):
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was "
                    "applied; add a new migration instead of editing an applied one"
                )
            continue
        for statement in migration.statements:
            try:
                store.command(statement)
            except StoreError as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name}: {exc}"
                ) from exc
        # Statements are idempotent (IF NOT EXISTS), so a crash before this
        # insert only means they run again, harmlessly, next time.
        store.command(
            "INSERT INTO schema_migrations (version, name, checksum) "
            "VALUES ({v:UInt32}, {n:String}, {c:String})",
            parameters={"v": migration.version, "n": migration.name, "c": migration.checksum},
        )
        newly.append(migration)
    return newly


RAW_HARDWARE_TABLES = ("gpu_samples", "host_samples")


def apply_retention(store: Store, raw_hardware_ttl_days: int) -> None:
    """Expire raw hardware samples after `raw_hardware_ttl_days` (0: keep forever).

    Configuration, not schema, so it is set at every start rather than by a
    migration; the per-minute rollups (migration 0006) keep no TTL."""
    for table in RAW_HARDWARE_TABLES:
        if raw_hardware_ttl_days > 0:
            store.command(
                f"ALTER TABLE {table} MODIFY TTL toDateTime(event_time) + "
                f"toIntervalDay({int(raw_hardware_ttl_days)})"
            )
            continue
        try:
            store.command(f"ALTER TABLE {table} REMOVE TTL")
        except StoreError as exc:
            if "TTL" not in str(exc):  # "no TTL to remove" is what we want anyway
                raise


def _has_sql(chunk: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in chunk.splitlines())
