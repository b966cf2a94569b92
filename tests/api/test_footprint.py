"""With the API up and no model loaded, nothing heavy is imported (the 40 MB RSS target's
reason; the figure itself is measured by tests/bench/agent_api.py)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["numpy", "onnxruntime", "tokenizers", "jinja2", "tuf", "uvicorn", "starlette", "fastapi", "controller"]

CODE = """
import json, sys, tempfile, http.client, socket
from pathlib import Path
from agent.api.host import ModelHost
from agent.api.service import ApiService
from agent.api.settings import ApiSettings
from agent.api.client import get
sock = Path(tempfile.mkdtemp(prefix="fgfp-")) / "a.sock"
api = ApiService(ApiSettings(socket=str(sock)), ModelHost())
api.start()
status, _ = get(sock, "/health")
api.stop()
print(json.dumps({"health": status, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def test_api_without_a_model_imports_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{CODE}"], capture_output=True, text=True,
                         timeout=60, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc == {"health": 503, "heavy": []}
