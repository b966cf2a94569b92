"""Log levels: the daemons log at INFO, one-shot commands at WARNING, and third-party
chatter sits below the user's level (issue 8, items 2 and 6)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.cli import build_parser as agent_parser
from controller.cli import build_parser as controller_parser
from controller.demo.brokers import Mosquitto
from tests.cli.support import REPO, cli


@pytest.mark.parametrize(
    ("parser", "argv", "level"),
    [
        (agent_parser, ["run"], "INFO"),
        (agent_parser, ["provision", "--root", "r.json"], "INFO"),
        (agent_parser, ["install-bundle", "f.fgb", "--metadata", "m"], "INFO"),
        (agent_parser, ["generate", "hi"], "WARNING"),
        (agent_parser, ["hw"], "WARNING"),
        (agent_parser, ["run", "--log-level", "DEBUG"], "DEBUG"),
        (controller_parser, ["serve"], "INFO"),
        (controller_parser, ["fleet", "ls"], "WARNING"),
        (controller_parser, ["director", "set", "d", "--repo", "r", "--no-target"], "WARNING"),
        (controller_parser, ["bundle", "--log-level", "DEBUG", "build", "m"], "DEBUG"),
    ],
)
def test_each_command_has_its_own_default(parser: object, argv: list[str], level: str) -> None:
    # one parser for all, as main() builds it: one subcommand's default must not leak into another
    assert parser().parse_args(argv).log_level == level  # type: ignore[operator]


def test_the_daemon_logs_at_info_by_default(tmp_path: Path, mosquitto: Mosquitto) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--device-id", "dev-1", "--state-dir", str(tmp_path / "state"),
         "--broker", f"mqtt://127.0.0.1:{mosquitto.port}", "--config", str(_empty_config(tmp_path))],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: list[str] = []
    connected = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "INFO agent.mqtt.link: connected to" in line:
                connected.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert connected.wait(60), "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text("")
    return path


def _has_tflite() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("ai_edge_litert", "tflite_runtime"))


@pytest.mark.skipif(not _has_tflite(), reason="no TFLite runtime installed")
def test_tflite_delegate_line_only_at_info(tmp_path: Path) -> None:
    model = REPO / "models" / "image" / "digits-cvae-tflite"
    args = ("generate", "--image", "--class", "3", "--seed", "1", "--model", str(model),
            "-o", str(tmp_path / "d.png"))
    quiet = cli("agent", *args, "--state-dir", str(tmp_path / "s"))
    assert quiet.code == 0, quiet.err
    assert quiet.err_lines == []
    loud = cli("agent", *args, "--state-dir", str(tmp_path / "s"), "--log-level", "INFO")
    assert loud.code == 0, loud.err
    assert any(line.startswith("INFO agent.runtime.native: Created TensorFlow Lite XNNPACK delegate")
               for line in loud.err_lines), loud.err


@pytest.mark.slow
def test_model_import_quantizer_detail_only_at_debug(tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    for f in ("model.onnx", "config.json", "tokenizer.json", "generation_config.json"):
        shutil.copy2(REPO / "models" / "text" / "austen-3m" / f, src / f)
    info = cli("controller", "model", "import", str(src), "-o", str(tmp_path / "int8"), "--quantize", "int8",
               "--log-level", "INFO")
    assert info.code == 0, info.err
    assert len(info.err_lines) < 12, info.err  # our own INFO lines, not ORT's ~100
    assert not any("onnxruntime" in line or "root:" in line for line in info.err_lines), info.err
    debug = cli("controller", "model", "import", str(src), "-o", str(tmp_path / "int8b"), "--quantize", "int8",
                "--log-level", "DEBUG")
    assert debug.code == 0, debug.err
    assert any("Quantization parameters for tensor" in line for line in debug.err_lines)
    default = cli("controller", "model", "import", str(src), "-o", str(tmp_path / "int8c"), "--quantize", "int8")
    assert default.code == 0 and default.err_lines == [], default.err
