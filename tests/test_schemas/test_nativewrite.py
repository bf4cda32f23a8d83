"""The C writer: built where a compiler is, chosen by the registry, switchable
off, and neither leaking nor crashing on bad input. Its bytes are checked
against fastavro in test_fastwrite.py, with the Python writer's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema

from schemas import default_registry
from schemas.codec import encode_version, event_hash, sealer
from schemas.errors import EncodeError
from schemas.fastwrite import compile_writer
from schemas.nativewrite import (
    AVAILABLE,
    DISABLE_ENV,
    Unsupported,
    loaded_library,
    native_writer,
    program,
    sha256_loaded,
)
from schemas.registry import Registry
from schemas.topics import TOPIC_OF
from tests.samples import record

needs_c = pytest.mark.skipif(not AVAILABLE, reason="C writer not built")


def test_the_extension_is_built_where_a_compiler_is() -> None:
    """`pip install` builds it; optional only so that a machine without a
    compiler still installs. Here a compiler means it must have been built."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert AVAILABLE, "schemas._avrowrite was not built: see the pip install log"
    import schemas._avrowrite as built

    source = Path(built.__file__).with_name("_avrowrite.c")
    if source.exists():  # an editable install builds next to the source
        assert Path(built.__file__).stat().st_mtime >= source.stat().st_mtime, (
            "schemas/_avrowrite.c changed since it was built: .venv/bin/pip install --no-deps -e ."
        )


@needs_c
def test_the_registry_uses_it_and_the_environment_turns_it_off() -> None:
    assert type(Registry.load().current("GpuSamples").write).__name__ == "Writer"
    code = (
        "from schemas.registry import Registry;"
        "print(type(Registry.load().current('GpuSamples').write).__name__)"
    )
    env = {DISABLE_ENV: "1", "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "function"  # fastwrite's generated writer


def test_program_mirrors_the_schema() -> None:
    schema = parse_schema(
        {
            "type": "record",
            "name": "P",
            "fields": [
                {"name": "a", "type": "long"},
                {"name": "b", "type": ["null", "string"]},
                {"name": "c", "type": {"type": "array", "items": "double"}, "default": []},
                {"name": "d", "type": {"type": "map", "values": "bytes"}},
            ],
        },
        named_schemas={},
    )
    assert program(schema) == (
        8,
        (
            ("a", 0, None, (3,)),
            ("b", 1, None, (11, 0, (6,))),
            ("c", 2, [], (9, (5,))),
            ("d", 0, None, (10, (7,))),
        ),
    )
    with pytest.raises(Unsupported):
        program({"type": "enum", "name": "E", "symbols": ["A"]})


@needs_c
@pytest.mark.parametrize(
    "bad",
    [(), (99,), (8, "fields"), (8, (("a", 7, None, (3,)),)), (11, 2, (3,)), (3,), [8, ()]],
)
def test_a_bad_program_is_a_clear_error(bad: Any) -> None:
    from schemas._avrowrite import Writer

    with pytest.raises((ValueError, TypeError)):
        Writer(bad)


@needs_c
def test_no_references_leak_on_success_or_failure() -> None:
    """Every value the writer touches, and every record it refuses half-way,
    keeps its reference count: a leak in C would grow the agent without bound."""
    gpu = default_registry().current("GpuSamples")
    write = native_writer(gpu.parsed)
    assert write is not None
    from bench.agent_overhead import gpu_events

    (ev,), _ = gpu_events(1, 1)
    rec = {**ev["body"], "envelope": record("GpuSamples")["envelope"]}
    column = next(v for v in rec.values() if isinstance(v, bytes) and len(v) > 8)
    bad = {**rec, "envelope": {**rec["envelope"], "seq": "not a number"}}
    before = (sys.getrefcount(rec), sys.getrefcount(column), sys.getrefcount(bad))
    for _ in range(1000):
        write(rec, gpu.head)
        with pytest.raises(TypeError):
            write(bad, gpu.head)
    assert (sys.getrefcount(rec), sys.getrefcount(column), sys.getrefcount(bad)) == before


@needs_c
def test_outputs_of_every_size_in_a_row_match() -> None:
    """The writer sizes its buffer from the last record: a small record after
    a large one, and a large one after a small, come out whole."""
    schema = parse_schema(
        {"type": "record", "name": "S", "fields": [{"name": "v", "type": "bytes"}]},
        named_schemas={},
    )
    c, py = native_writer(schema), compile_writer(schema)
    assert c is not None and py is not None
    for size in (0, 300_000, 1, 5000, 0, 2_000_000, 17):
        rec = {"v": bytes(range(256)) * (size // 256) + b"x" * (size % 256)}
        assert c(rec, b"head") == py(rec, b"head")


@needs_c
def test_an_array_changed_while_written_is_refused_not_misread() -> None:
    """The writer holds only borrowed items of a list; a value whose own
    code empties that list must give an error, never a read past its end."""
    schema = parse_schema(
        {
            "type": "record",
            "name": "A",
            "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}],
        },
        named_schemas={},
    )
    write = native_writer(schema)
    assert write is not None
    xs: list[Any] = []

    class Shrinks:
        def __index__(self) -> int:
            xs.clear()
            return 1

    xs.extend([Shrinks(), 2, 3])
    with pytest.raises(ValueError, match="changed size"):
        write({"xs": xs})


def test_seal_is_encode_then_hash_for_every_type() -> None:
    """The agent's one call per event: the same bytes as writing the body
    with its envelope, and their SHA-256, by whichever writer runs."""
    reg = default_registry()
    for name in TOPIC_OF:
        version = reg.current(name)
        rec = record(name)
        env = rec.pop("envelope")
        value = encode_version(version, {**rec, "envelope": env})
        assert sealer(version)(rec, env) == (value, event_hash(value)), name
        # A body's own envelope field is not the one written.
        stale = {**env, "seq": 99}
        assert sealer(version)({**rec, "envelope": stale}, env)[0] == value, name


@needs_c
def test_the_c_seal_is_chosen_and_refuses_bad_input() -> None:
    assert sha256_loaded()
    gpu = default_registry().current("GpuSamples")
    assert sealer(gpu).__name__ == "native"
    rec = record("GpuSamples")
    env = rec.pop("envelope")
    seal = gpu.write.seal  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="seal"):
        seal(rec, gpu.head)
    with pytest.raises(TypeError, match="seal"):
        seal(rec, "not bytes", env)
    with pytest.raises(TypeError):
        seal(rec, gpu.head, "not a record")
    with pytest.raises(EncodeError):
        sealer(gpu)(rec, {**env, "seq": "x"})
    no_envelope = native_writer(
        parse_schema({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})
    )
    assert no_envelope is not None
    with pytest.raises(ValueError, match="no envelope"):
        no_envelope.seal({"a": 1}, b"", {})


@needs_c
def test_seal_holds_no_references() -> None:
    gpu = default_registry().current("GpuSamples")
    rec = record("GpuSamples")
    env = rec.pop("envelope")
    bad = {**env, "seq": "x"}
    seal = gpu.write.seal  # type: ignore[union-attr]
    before = (sys.getrefcount(rec), sys.getrefcount(env), sys.getrefcount(bad))
    for _ in range(1000):
        seal(rec, gpu.head, env)
        with pytest.raises(TypeError):
            seal(rec, gpu.head, bad)
    assert (sys.getrefcount(rec), sys.getrefcount(env), sys.getrefcount(bad)) == before


def test_loaded_library_reads_the_memory_map(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 fd:01 1 /usr/lib/libc.so.6\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n"
        "7f04-7f05 r-xp 00001000 fd:01 2 /opt/a b/libcrypto.so.3\n"
    )
    assert loaded_library("libcrypto", maps) == "/opt/a b/libcrypto.so.3"
    assert loaded_library("librdkafka", maps) is None
    assert loaded_library("libcrypto", tmp_path / "absent") is None


@needs_c
def test_use_sha256_takes_only_a_loaded_library(tmp_path: Path) -> None:
    from schemas._avrowrite import use_sha256  # type: ignore[import-not-found]

    with pytest.raises(ImportError, match="not loaded"):
        use_sha256(str(tmp_path / "libcrypto.so.3"))
    libc = loaded_library("libc.so") or loaded_library("libc-")
    if libc is not None:
        with pytest.raises(ImportError, match="no SHA256"):
            use_sha256(libc)


def test_a_large_message_is_sealed_alike() -> None:
    """From 64 KB the C seal hashes without the GIL (other threads run
    meanwhile); the bytes and the digest are the same."""
    from bench.agent_overhead import metrics_events

    (ev,), _ = metrics_events(1)
    version = default_registry().current("Metrics")
    env = record("Metrics")["envelope"]
    value, digest = sealer(version)(ev["body"], env)
    assert len(value) > 64 * 1024
    assert value == encode_version(version, {**ev["body"], "envelope": env})
    assert digest == event_hash(value)
