"""The agent daemon starts without heavy libraries and never pulls in controller code."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["onnxruntime", "tflite_runtime", "ai_edge_litert", "tokenizers", "tuf", "sqlalchemy", "fastapi", "torch",
         "controller", "models"]


def test_daemon_import_is_light() -> None:
    code = (
        "import sys, json; import agent.daemon, agent.cli.run, agent.cli;"
        "agent.cli.build_parser();"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
