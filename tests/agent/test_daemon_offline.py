"""A long outage fills paho's bounded queue: the agent drops with a warning, never dies."""

from __future__ import annotations

from pathlib import Path

from agent.config import AgentConfig, TelemetrySettings
from agent.daemon import Agent
from agent.mqtt.settings import MqttSettings
from controller.demo.brokers import free_port


def test_full_outgoing_queue_drops_instead_of_crashing(tmp_path: Path) -> None:
    config = AgentConfig(
        device_id="away-1", state_dir=str(tmp_path),
        mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}", max_queued=3, reconnect_min_s=5),
        telemetry=TelemetrySettings(sample_interval_s=0.1, publish_interval_s=0.1),
    )
    agent = Agent(config)
    agent.link.start()  # nothing listens on that port: every publish stays queued
    try:
        for _ in range(10):
            agent.sample()
            agent.flush_telemetry()
            agent.emit("test.tick")
        assert agent.stats.dropped_outbound >= 10
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
