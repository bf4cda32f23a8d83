"""The wire contract: every schema round-trips, any Avro library can read it,
old writers resolve to the current reader, and bad bytes say what is wrong."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path

import avro.io
import avro.schema
import pytest

from schemas import (
    CorruptPayloadError,
    EncodeError,
    NotSingleObjectError,
    UnknownFingerprintError,
    UnknownSchemaError,
    decode,
    default_registry,
    encode,
)
from schemas.registry import AVRO_DIR
from schemas.topics import TOPIC_OF
from tests.samples import metrics_v1_record, record, registry_with_field, registry_without

EVENT_TYPES = sorted(TOPIC_OF)


class TestRoundTrip:
    @pytest.mark.parametrize("kind", EVENT_TYPES)
    def test_every_event_type_round_trips(self, kind: str) -> None:
        reg = default_registry()
        rec = record(kind)
        data = encode(reg, kind, rec)
        assert data[:2] == b"\xc3\x01"
        decoded = decode(reg, data)
        assert decoded.name == kind
        assert str(decoded.record["envelope"]["event_id"]) == rec["envelope"]["event_id"]
        if kind == "Metrics":
            values = struct.unpack("<4d", decoded.record["value_le"])
            assert values[0] == 2.5 and math.isnan(values[2]) and values[3] == math.inf

    def test_every_topic_type_has_a_schema(self) -> None:
        assert set(EVENT_TYPES) <= set(default_registry().names())

    def test_envelope_is_identical_in_every_file(self) -> None:
        reference = json.loads((AVRO_DIR / "Envelope" / "v1.avsc").read_text())
        for path in AVRO_DIR.glob("*/v*.avsc"):
            if path.parent.name == "Envelope":
                continue
            fields = json.loads(path.read_text())["fields"]
            assert fields[0]["name"] == "envelope", path
            assert fields[0]["type"] == reference, path


class TestReferenceAvro:
    """Decoding with Apache Avro's own Python library, given only the .avsc files."""

    @pytest.mark.parametrize("kind", EVENT_TYPES)
    def test_apache_avro_reads_our_bytes(self, kind: str) -> None:
        data = encode(default_registry(), kind, record(kind))
        decoded = decode_with_reference_avro(data)
        assert decoded["envelope"]["stream"] == "run/r1"


def decode_with_reference_avro(data: bytes, root: Path = AVRO_DIR) -> dict[str, object]:
    """Find the writer schema by its CRC-64-AVRO fingerprint, as any reader would."""
    assert data[:2] == b"\xc3\x01"
    for path in root.glob("*/v*.avsc"):
        schema = avro.schema.parse(path.read_text())
        if schema.fingerprint("CRC-64-AVRO") == data[2:10]:
            reader = avro.io.DatumReader(schema)
            result = reader.read(avro.io.BinaryDecoder(io.BytesIO(data[10:])))
            assert isinstance(result, dict)
            return result
    raise AssertionError(f"no .avsc has fingerprint {data[2:10].hex()}")


class TestEvolution:
    def test_metrics_v1_message_reads_into_current_v2(self, tmp_path: Path) -> None:
        old = registry_without(tmp_path, "Metrics/v2.avsc")
        assert old.current("Metrics").version == 1
        decoded = decode(default_registry(), encode(old, "Metrics", metrics_v1_record()))
        assert decoded.writer.version == 1
        assert default_registry().current("Metrics").version == 2
        assert decoded.record["names"] == ["loss", "acc"]
        assert decoded.record["step"] == [0, 0, 1, 1]
        assert decoded.record["value_le"] == b""  # the new fields take their defaults

    def test_new_field_takes_its_default(self, tmp_path: Path) -> None:
        new = registry_with_field(
            tmp_path, "Metrics", {"name": "unit", "type": "string", "default": "1"}
        )
        assert new.current("Metrics").version == 3
        decoded = decode(new, encode(default_registry(), "Metrics", record("Metrics")))
        assert decoded.writer.version == 2
        assert decoded.record["unit"] == "1"
        assert decoded.record["names"] == ["loss", "acc"]


class TestErrors:
    def test_garbage_is_not_single_object(self) -> None:
        with pytest.raises(NotSingleObjectError):
            decode(default_registry(), b"hello world")

    def test_unknown_fingerprint(self) -> None:
        with pytest.raises(UnknownFingerprintError, match="0102030405060708"):
            decode(default_registry(), b"\xc3\x01" + bytes(range(1, 9)) + b"\x00")

    def test_truncated_body_is_corrupt(self) -> None:
        data = encode(default_registry(), "RunStarted", record("RunStarted"))
        with pytest.raises(CorruptPayloadError):
            decode(default_registry(), data[:-5])

    def test_trailing_bytes_are_corrupt(self) -> None:
        data = encode(default_registry(), "RunFinished", record("RunFinished"))
        with pytest.raises(CorruptPayloadError, match="trailing"):
            decode(default_registry(), data + b"\x00")

    def test_encode_names_the_problem(self) -> None:
        bad = record("Metrics")
        del bad["names"]
        with pytest.raises(EncodeError, match="names"):
            encode(default_registry(), "Metrics", bad)

    def test_unknown_schema_name(self) -> None:
        with pytest.raises(UnknownSchemaError):
            default_registry().current("Nope")
