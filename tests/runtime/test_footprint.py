"""Importing the runtime must not import the heavy libraries (DESIGN §1), nor controller/models."""

from __future__ import annotations

import subprocess
import sys

from tests.runtime.conftest import REPO


def test_runtime_import_is_light() -> None:
    code = (
        "import sys, agent.runtime, agent.runtime.service, agent.cli.generate\n"
        "heavy = ('onnxruntime', 'tokenizers', 'tflite_runtime', 'ai_edge_litert', 'onnx',"
        " 'controller', 'models')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True, timeout=60)
    assert out.stdout.strip() == ""
