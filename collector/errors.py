"""Collector errors, caught where something can act on them.

`StoreError` means ClickHouse refused or could not be reached: the pipeline
must not commit offsets for what it holds. `ConfigError` stops a process at
start with one line naming the setting. `InvalidEventError` is an event, not
the collector, at fault: it becomes a dead letter.
"""

from __future__ import annotations

__all__ = [
    "CollectorError",
    "ConfigError",
    "InvalidEventError",
    "MigrationError",
    "QueryError",
    "StoreError",
]


class CollectorError(Exception):
    """Root of the collector's own errors."""


class ConfigError(CollectorError):
    """A setting with a value the collector cannot use."""


class StoreError(CollectorError):
    """ClickHouse could not be reached or rejected a statement."""


class MigrationError(StoreError):
    """A migration failed, or an applied migration's file has since changed."""


class QueryError(CollectorError):
    """A query command could not be answered (bad arguments, API unreachable)."""


class InvalidEventError(ValueError):
    """Schema-valid bytes whose content cannot be stored as it claims to be."""
