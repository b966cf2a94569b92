"""A tiny model folder for trust tests: content does not matter, the manifest does."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.manifest import ModelManifest, TextSpec, file_entries, write_manifest


def make_model_dir(
    root: Path,
    name: str = "tiny",
    version: str = "1.0.0",
    boards: tuple[str, ...] = ("*",),
    size: int = 4096,
) -> Path:
    """Write a model folder (model.onnx, tokenizer.json, a nested file) with its manifest."""
    model_dir = root / f"{name}-{version}"
    (model_dir / "extra").mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(os.urandom(size))
    (model_dir / "tokenizer.json").write_text(json.dumps({"version": version}))
    (model_dir / "extra" / "defaults.json").write_text('{"temperature": 0.7}')
    paths = ["model.onnx", "tokenizer.json", "extra/defaults.json"]
    manifest = ModelManifest(
        name=name,
        version=version,
        task="text-generation",
        engine="onnxruntime",
        model="model.onnx",
        tokenizer="tokenizer.json",
        files=file_entries(model_dir, paths),
        boards=list(boards),
        text=TextSpec(num_layers=1, num_heads=1, head_dim=8, vocab_size=16, context_length=32),
    )
    write_manifest(model_dir, manifest)
    return model_dir
