"""The shipper's produce path in C (agent/_kafkacore.c) on confluent-kafka's librdkafka.

confluent-kafka's Python API costs a produce call and a Python delivery
report per message, which kept the agent's rate well under a raw produce of
the same bytes. The C producer takes a whole spool read per call and returns
a poll's reports as one list. It drives the librdkafka that confluent-kafka
already loaded (found in this process's memory map, opened with
RTLD_NOLOAD): one library, one version, no headers or extra package needed.

Used when the extension was built (`pip install` compiles it; without a C
compiler the package installs without it), the library is found (Linux) and
`TRAINTRAIL_PURE_PYTHON` is unset; otherwise `agent.producer.PythonProducer`
serves, with the same behaviour.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.producer import ClientError, Failure, Reports
from schemas.nativewrite import DISABLE_ENV, loaded_library

__all__ = ["NativeProducer", "available", "describe", "library_path"]

log = structlog.get_logger("traintrail.kafkacore")

try:
    from agent._kafkacore import Producer as _CProducer
    from agent._kafkacore import load as _c_load
except ImportError:  # built without a compiler
    _CProducer = _c_load = None


def library_path(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The path of the librdkafka confluent-kafka loaded, from this process's
    memory map; None where there is none (not Linux, a static build)."""
    import confluent_kafka.cimpl  # noqa: F401  (loads librdkafka)

    return loaded_library("librdkafka", maps)


@functools.cache
def _load() -> tuple[int | None, str]:
    """(librdkafka's version number or None, why not)."""
    if _c_load is None:
        return None, "the C producer was not built: no C compiler at install"
    path = library_path()
    if path is None:
        return None, "confluent-kafka's librdkafka not found in this process"
    try:
        return int(_c_load(path)), path
    except ImportError as exc:
        return None, str(exc)


def available() -> bool:
    return not os.environ.get(DISABLE_ENV) and _load()[0] is not None


def describe() -> str:
    """Which producer ships, for the agent's status and start-up log."""
    if os.environ.get(DISABLE_ENV):
        return f"python ({DISABLE_ENV} is set)"
    version, why = _load()
    if version is None:
        return f"python ({why})"
    major, minor, patch = version >> 24, (version >> 16) & 0xFF, (version >> 8) & 0xFF
    return f"c (librdkafka {major}.{minor}.{patch})"


def _setting(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class NativeProducer:
    """The DeliveryProducer in C: created on first use, like confluent-kafka's."""

    def __init__(self, settings: dict[str, Any]) -> None:
        if _load()[0] is None:
            raise RuntimeError(f"the C producer is unavailable: {_load()[1]}")
        self._settings = {name: _setting(value) for name, value in settings.items()}
        self._client: Any = None

    def _open(self) -> Any:
        if self._client is None:
            self._client = _CProducer(self._settings)
        return self._client

    def produce(
        self, spool: int, records: Sequence[tuple[int, str, bytes, bytes]], started: float
    ) -> tuple[int, list[Failure]]:
        batch = records if isinstance(records, list) else list(records)
        taken, refused = self._open().produce(spool, batch, started)
        topics = {rid: topic for rid, topic, _k, _v in batch[:taken]} if refused else {}
        return taken, [Failure(spool, rid, topics[rid], *why) for rid, *why in refused]

    def poll(self, timeout: float) -> Reports:
        return _reports(self._open().poll(timeout))

    def flush(self, timeout: float) -> int:
        return 0 if self._client is None else int(self._client.flush(timeout))

    def fatal(self) -> ClientError | None:
        found = None if self._client is None else self._client.fatal()
        return None if found is None else ClientError(*found)

    def close(self) -> Reports:
        if self._client is None:
            return Reports()
        client, self._client = self._client, None
        return _reports(client.close())


def _reports(raw: tuple[list[Any], list[Any], list[Any]]) -> Reports:
    delivered, failed, errors = raw
    return Reports(
        delivered,
        [Failure(*f) for f in failed] if failed else [],
        [ClientError(*e) for e in errors] if errors else [],
    )
