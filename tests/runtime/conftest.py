"""Models the runtime tests share: a tiny GPT-2-shaped Optimum export (built here, no torch),
its int8/int4 fleetgen imports, tiny image generators, and the shipped models when present."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import EngineOptions, TextGenerator, load_model
from models.gpt2_onnx import TINY, write_optimum_folder
from tests.runtime.image_models import write_folder

REPO = Path(__file__).resolve().parents[2]
ONE_THREAD = EngineOptions(threads=1)


def shipped(kind: str) -> list[Path]:
    return sorted(p.parent for p in (REPO / "models" / kind).glob("*/manifest.json"))


def shipped_text(quantization: str | None = None) -> list[Path]:
    out = []
    for folder in shipped("text"):
        meta = json.loads((folder / "manifest.json").read_text())
        if quantization is None or meta.get("quantization") == quantization:
            out.append(folder)
    return out


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # init_scale 20: a random model at GPT-2 init repeats one token; this one varies with context
    return write_optimum_folder(tmp_path_factory.mktemp("tiny-gpt2"), TINY, seed=0, init_scale=20)


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> Iterator[TextGenerator]:
    gen = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    yield gen
    gen.close()


def _import(src: Path, out: Path, quantize: str | None) -> Path:
    from controller.cli import main

    args = ["model", "import", str(src), "-o", str(out), "--log-level", "WARNING"]
    assert main(args + (["--quantize", quantize] if quantize else [])) == 0
    return out


@pytest.fixture(scope="session")
def tiny_int8_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _import(tiny_dir, tmp_path_factory.mktemp("imp") / "tiny-int8", "int8")


@pytest.fixture(scope="session")
def tiny_int4_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _import(tiny_dir, tmp_path_factory.mktemp("imp") / "tiny-int4", "int4")


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("img")
    return {e: write_folder(root / e, e) for e in ("onnxruntime", "tflite")}
