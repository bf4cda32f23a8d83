"""Schema evolution gate: every historical version resolves into the current one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema

from schemas import decode, default_registry, encode
from schemas.compat import check, check_registry
from tests.samples import record, registry_with_field


def test_the_shipped_registry_is_compatible() -> None:
    """The CI gate: an incompatible .avsc in schemas/avro fails here."""
    registry = default_registry()
    assert check_registry(registry) == []
    assert any(len(v) > 1 for v in registry.versions.values())  # evolution is exercised


def _record(*fields: dict[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields)}


V1 = _record(
    {"name": "id", "type": "string"},
    {"name": "n", "type": "int"},
    {"name": "opt", "type": ["null", "long"], "default": None},
    {"name": "kind", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
)


def _evolve(**changes: Any) -> dict[str, Any]:
    fields = [dict(f) for f in V1["fields"]]
    for f in fields:
        if f["name"] in changes:
            f["type"] = changes.pop(f["name"])
            if f.get("default") is None and not isinstance(f["type"], list):
                f.pop("default", None)
    return _record(*fields, *changes.pop("add", ()), name=changes.pop("name", "R"))


@pytest.mark.parametrize(
    ("reader", "reason"),
    [
        (_evolve(add=[{"name": "new", "type": "string"}]), "new field without a default"),
        (_evolve(n="string"), "int cannot be read as string"),
        (_evolve(opt="long"), "null cannot be read as long"),
        (
            _evolve(kind={"type": "enum", "name": "K", "symbols": ["A"]}),
            "enum symbols ['B'] unknown",
        ),
        (_evolve(tags={"type": "array", "items": "int"}), "string cannot be read as int"),
        (_evolve(name="Other"), "renamed"),
    ],
)
def test_incompatible_changes_are_named(reader: dict[str, Any], reason: str) -> None:
    problems = check(parse_schema(V1, named_schemas={}), parse_schema(reader, named_schemas={}))
    assert problems, reader
    assert any(reason in why for _path, why in problems), problems


@pytest.mark.parametrize(
    "reader",
    [
        _evolve(add=[{"name": "new", "type": "string", "default": "x"}]),
        _evolve(n="long"),  # promotion
        _evolve(n="double"),
        _evolve(opt=["null", "long", "string"]),
        _evolve(id="bytes"),
        _evolve(kind={"type": "enum", "name": "K", "symbols": ["A", "B", "C"]}),
    ],
)
def test_compatible_changes_pass(reader: dict[str, Any]) -> None:
    assert check(parse_schema(V1, named_schemas={}), parse_schema(reader, named_schemas={})) == []


def test_an_incompatible_new_version_in_the_registry_is_caught(tmp_path: Path) -> None:
    bad = registry_with_field(tmp_path, "CheckpointSaved", {"name": "owner", "type": "string"})
    problems = check_registry(bad)
    assert [(p.name, p.writer_version, p.reader_version, p.path) for p in problems] == [
        ("CheckpointSaved", 1, 2, "owner")
    ]
    assert "new field without a default" in str(problems[0])


def test_compatible_verdict_matches_what_the_decoder_does(tmp_path: Path) -> None:
    """The checker and fastavro agree on a real message: checked-compatible decodes."""
    new = registry_with_field(
        tmp_path, "CheckpointSaved", {"name": "owner", "type": "string", "default": "-"}
    )
    assert check_registry(new) == []
    decoded = decode(new, encode(default_registry(), "CheckpointSaved", record("CheckpointSaved")))
    assert decoded.writer.version == 1 and decoded.record["owner"] == "-"
