"""What ingest drops, and counts, before anything reaches the store."""

from __future__ import annotations

from pathlib import Path

from agent.mqtt.link import Inbound
from agent.protocol import Channel, TelemetryBatch, TelemetrySample, device_topic, encode
from controller.config import ControllerConfig
from controller.services.ingest import FUTURE_SLACK_S, Ingestor
from controller.store import Store

NOW = 1_000_000.0


def ingestor(tmp_path: Path) -> Ingestor:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    return Ingestor(ControllerConfig(state_dir=str(tmp_path)), store, clock=lambda: NOW)


def telemetry(payload: bytes) -> Inbound:
    return Inbound(device_topic("d1", Channel.TELEMETRY), payload, False, 1, 7)


def sample(seq: int, ts: float) -> TelemetrySample:
    return TelemetrySample(seq=seq, ts=ts, cpu_pct=1, mem_used_mb=1, mem_total_mb=2, power_w=3.0)


def test_future_samples_are_dropped_one_by_one_and_counted(tmp_path: Path) -> None:
    ing = ingestor(tmp_path)
    batch = TelemetryBatch(device_id="d1", samples=[sample(1, NOW), sample(2, NOW + FUTURE_SLACK_S + 1)])
    parsed = ing.parse(telemetry(encode(batch)))
    assert parsed is not None and [s.seq for s in parsed.message.samples] == [1]  # type: ignore[attr-defined]
    assert ing.dropped == {"future_timestamp": 1}


def test_impossible_values_refuse_the_document_and_are_counted(tmp_path: Path) -> None:
    ing = ingestor(tmp_path)
    negative = b'{"schema":1,"device_id":"d1","samples":[{"seq":1,"ts":1,"cpu_pct":1,"mem_used_mb":1,' \
               b'"mem_total_mb":2,"power_w":-5}]}'
    nan = negative.replace(b"-5", b"NaN")
    for payload in (negative, nan, b"garbage"):
        assert ing.parse(telemetry(payload)) is None
    assert ing.dropped == {"invalid": 3}


def test_telemetry_of_an_unregistered_device_is_counted_not_stored(tmp_path: Path) -> None:
    ing = ingestor(tmp_path)
    parsed = ing.parse(telemetry(encode(TelemetryBatch(device_id="d1", samples=[sample(1, NOW)]))))
    assert parsed is not None
    assert ing._commit([parsed])
    assert ing.dropped == {"unknown_device": 1}
    assert ing.store.telemetry_count("d1") == 0
