"""Can the current schema of a type read everything ever written with an older one?

Messages live in Kafka (and dead-letter tables) for as long as retention
says, and replays read them again months later, so every historical version
of a type must resolve into its current version under the Avro spec's
schema-resolution rules. `check` walks writer and reader schemas side by side
and lists each rule a change breaks, with the path of the field: a new field
without a default, a type changed to one Avro cannot promote, a union branch
or enum symbol the reader lacks, a renamed record. `traintrail schemas check`
runs it over the registry, and the test suite does too, so an incompatible
`.avsc` cannot ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.registry import Registry

__all__ = ["Incompatibility", "check", "check_registry"]

# writer type -> reader types it resolves to (Avro 1.11 spec, "Schema Resolution")
_PROMOTIONS: dict[str, set[str]] = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


@dataclass(frozen=True)
class Incompatibility:
    """One rule broken: which type, which versions, where in the record, and why."""

    name: str
    writer_version: int
    reader_version: int
    path: str
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.name} v{self.writer_version} -> v{self.reader_version}: "
            f"{self.path or '<root>'}: {self.reason}"
        )


def check(writer: Any, reader: Any) -> list[tuple[str, str]]:
    """(path, reason) for every way `reader` fails to read data written with `writer`.

    Both are parsed schemas (fastavro `parse_schema` output or plain JSON)."""
    out: list[tuple[str, str]] = []
    _resolve(writer, reader, "", out, set())
    return out


def check_registry(registry: Registry) -> list[Incompatibility]:
    """Every historical version of every type against that type's current version."""
    problems: list[Incompatibility] = []
    for name, versions in sorted(registry.versions.items()):
        current = versions[-1]
        for old in versions[:-1]:
            for path, reason in check(old.parsed, current.parsed):
                problems.append(Incompatibility(name, old.version, current.version, path, reason))
    return problems


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, (dict, list)):
            return _kind(kind)
        return str(kind)
    return str(schema)


def _name(schema: Any) -> str:
    if isinstance(schema, dict):
        name = str(schema.get("name", ""))
        namespace = schema.get("namespace")
        return f"{namespace}.{name}" if namespace and "." not in name else name
    return str(schema)


def _resolve(
    writer: Any, reader: Any, path: str, out: list[tuple[str, str]], seen: set[tuple[str, str]]
) -> None:
    wk, rk = _kind(writer), _kind(reader)
    named = {k for k in (wk, rk) if k not in _PRIMITIVES and isinstance(k, str) and "." in k}
    if named and isinstance(writer, str) and isinstance(reader, str):
        if writer.split(".")[-1] != reader.split(".")[-1]:  # references to named types
            out.append((path, f"{writer} cannot be read as {reader}"))
        return
    if wk == "union":
        for branch in writer:  # every branch the writer may have used must be readable
            _resolve(branch, reader, path, out, seen)
        return
    if rk == "union":
        if not any(_matches(writer, branch) for branch in reader):
            out.append((path, f"reader union {_describe(reader)} has no branch for {wk}"))
            return
        target = next(branch for branch in reader if _matches(writer, branch))
        _resolve(writer, target, path, out, seen)
        return
    if wk in _PRIMITIVES or rk in _PRIMITIVES:
        if wk != rk and rk not in _PROMOTIONS.get(wk, set()):
            out.append((path, f"{wk} cannot be read as {rk}"))
        return
    if wk != rk:
        out.append((path, f"{wk} cannot be read as {rk}"))
        return
    if wk == "record":
        _record(writer, reader, path, out, seen)
    elif wk == "array":
        _resolve(writer["items"], reader["items"], f"{path}[]", out, seen)
    elif wk == "map":
        _resolve(writer["values"], reader["values"], f"{path}{{}}", out, seen)
    elif wk == "enum":
        if _name(writer).split(".")[-1] != _name(reader).split(".")[-1]:
            out.append((path, f"enum {_name(writer)} renamed to {_name(reader)}"))
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            out.append((path, f"enum symbols {missing} unknown to the reader (and no default)"))
    elif wk == "fixed" and writer.get("size") != reader.get("size"):
        out.append((path, f"fixed size {writer.get('size')} -> {reader.get('size')}"))


def _record(
    writer: Any, reader: Any, path: str, out: list[tuple[str, str]], seen: set[tuple[str, str]]
) -> None:
    wname, rname = _name(writer), _name(reader)
    if wname.split(".")[-1] != rname.split(".")[-1]:
        out.append((path, f"record {wname} renamed to {rname}"))
        return
    key = (wname, path)
    if key in seen:  # a recursive type: already being checked on this path
        return
    seen.add(key)
    written = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        where = f"{path}.{field['name']}" if path else field["name"]
        source = written.get(field["name"])
        if source is None:
            for alias in field.get("aliases", ()):
                source = written.get(alias)
                if source is not None:
                    break
        if source is None:
            if "default" not in field:
                out.append((where, "new field without a default"))
            continue
        _resolve(source["type"], field["type"], where, out, seen)


def _matches(writer: Any, branch: Any) -> bool:
    """Whether a writer type resolves to this reader union branch (first match wins)."""
    wk, bk = _kind(writer), _kind(branch)
    if wk == bk:
        if wk in {"record", "enum", "fixed"}:
            return _name(writer).split(".")[-1] == _name(branch).split(".")[-1]
        return True
    return bk in _PROMOTIONS.get(wk, set())


def _describe(schema: Any) -> str:
    return "[" + ", ".join(_kind(b) if _kind(b) not in {"record", "enum", "fixed"}
                           else _name(b) for b in schema) + "]"  # fmt: skip
