"""Settings loading shared by agent and collector: TOML file, then env.

A settings class is a frozen dataclass whose field names are
`<section>_<key>`: the field `kafka_bootstrap` is `bootstrap` under
`[kafka]` in the TOML file and `TRAINTRAIL_KAFKA_BOOTSTRAP` in the
environment, which wins. Each field carries its help text in metadata, so
`--help`, `check-config` and the README table come from one place.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "SettingsError",
    "describe",
    "effective",
    "env_name",
    "format_effective",
    "load_settings",
    "redact_url",
    "setting",
]

T = TypeVar("T")
ENV_PREFIX = "TRAINTRAIL_"


class SettingsError(ValueError):
    """A setting that is unknown or has a value of the wrong type; the message
    names the setting, the source and the value."""


def setting(default: Any, help: str) -> Any:
    """A dataclass field with a documented default."""
    return dataclasses.field(default=default, metadata={"help": help})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _toml_path(field_name: str) -> tuple[str, str]:
    section, _, key = field_name.partition("_")
    return section, key


def _coerce(kind: str, raw: Any, where: str) -> Any:
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "str":
            if not isinstance(raw, str):
                raise ValueError(raw)
            return raw
    except ValueError:
        raise SettingsError(f"{where}: expected {kind}, got {raw!r}") from None
    raise SettingsError(f"{where}: unsupported setting type {kind}")


def load_settings(
    cls: type[T],
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Defaults, then the TOML file, then `TRAINTRAIL_*`, then explicit overrides."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"config file {path}: {exc}") from None
        for section, table in data.items():
            if not isinstance(table, dict):
                raise SettingsError(f"{path}: top-level key {section!r} must be a [section]")
            for key, raw in table.items():
                name = f"{section}_{key}"
                if name not in fields:
                    raise SettingsError(f"{path}: unknown setting [{section}] {key}")
                values[name] = _coerce(str(fields[name].type), raw, f"{path}: [{section}] {key}")
    for name, f in fields.items():
        raw_env = environ.get(env_name(name))
        if raw_env is not None:
            values[name] = _coerce(str(f.type), raw_env, env_name(name))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls(**values)


def describe(cls: type[Any]) -> list[dict[str, str]]:
    """Every setting with its TOML key, env var, default and help text."""
    rows = []
    for f in dataclasses.fields(cls):
        section, key = _toml_path(f.name)
        rows.append(
            {
                "toml": f"[{section}] {key}",
                "env": env_name(f.name),
                "default": repr(f.default),
                "help": str(f.metadata.get("help", "")),
            }
        )
    return rows


def redact_url(value: str) -> str:
    """A URL with any password replaced, for logs, errors and `config` output."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def effective(config: Any) -> list[dict[str, str]]:
    """`describe` plus each setting's value in effect (passwords redacted)."""
    rows = describe(type(config))
    for row, f in zip(rows, dataclasses.fields(config), strict=True):
        value = getattr(config, f.name)
        row["value"] = redact_url(value) if isinstance(value, str) else repr(value)
    return rows


def format_effective(rows: list[dict[str, str]]) -> str:
    width_toml = max(len(r["toml"]) for r in rows)
    width_env = max(len(r["env"]) for r in rows)
    return "\n".join(
        f"{r['toml']:<{width_toml}}  {r['env']:<{width_env}}  = {r['value']}" for r in rows
    )
