"""A long outage fills paho's bounded queue: the agent drops with a warning, never dies."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, SpoolSettings, TelemetrySettings
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from controller.demo.brokers import free_port


def test_a_long_outage_keeps_everything_in_the_bounded_spool(tmp_path: Path) -> None:
    config = AgentConfig(
        device_id="away-1", state_dir=str(tmp_path),
        mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}", max_queued=3, reconnect_min_s=5),
        telemetry=TelemetrySettings(sample_interval_s=0.1, publish_interval_s=0.1),
        spool=SpoolSettings(max_bytes=64 * 1024),
    )
    agent = Agent(config)
    agent.link.start()  # nothing listens on that port: nothing leaves the spool
    try:
        for _ in range(10):
            agent.sample()
            agent.flush_telemetry()
            agent.emit("test.tick")
        stats = agent.spool.stats()
        assert stats.rows == 20 and agent.stats.dropped_outbound == 0
        for _ in range(400):  # far past the 64 KiB bound: the oldest samples go, events stay
            agent.sample()
        stats = agent.spool.stats()
        assert stats.dropped_samples > 0 and stats.dropped_events == 0
        assert stats.bytes <= 64 * 1024
        assert len(agent.spool.oldest("event", 100)) == 10
    finally:
        agent.link.stop()


def test_start_clears_what_an_interrupted_install_left(tmp_path: Path) -> None:
    """kill -9 between unpacking and the `current` flip leaves an orphan folder and a temp link."""
    bundles = tmp_path / "bundles"
    (bundles / "orphan-1.0.0-0123456789abcdef").mkdir(parents=True)
    (bundles / "orphan-1.0.0-0123456789abcdef" / "model.onnx").write_bytes(b"half")
    (tmp_path / ".current.new123").symlink_to("bundles/orphan-1.0.0-0123456789abcdef")
    agent = Agent(AgentConfig(device_id="crash-1", state_dir=str(tmp_path),
                              mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}")))
    assert agent.state.active_bundle is None
    assert not (bundles / "orphan-1.0.0-0123456789abcdef").exists()
    assert not (tmp_path / ".current.new123").is_symlink()
