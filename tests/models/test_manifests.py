"""Every committed model folder has a valid manifest whose files match their hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.manifest import load_manifest, verify_files
from models.build import BUDGET_BYTES, shipped_bytes
from tests.models.conftest import ALL_DIRS, IMAGE_DIRS, TEXT_DIRS


def test_the_shipped_set_is_complete() -> None:
    assert [p.name for p in TEXT_DIRS] == ["austen-3m", "austen-3m-int4", "austen-3m-int8"]
    assert [p.name for p in IMAGE_DIRS] == [
        "digits-cvae-onnx",
        "digits-cvae-tflite",
        "digits-cvae-tflite-int8",
    ]


def test_shipped_models_fit_the_size_budget() -> None:
    assert shipped_bytes() <= BUDGET_BYTES


@pytest.mark.parametrize("folder", ALL_DIRS, ids=[p.name for p in ALL_DIRS])
def test_manifest_is_valid_and_files_match(folder: Path) -> None:
    manifest = load_manifest(folder)
    verify_files(folder, manifest)
    assert manifest.name == folder.name
    assert manifest.boards == ["*"]
    assert manifest.license and manifest.min_ram_mb > 0
    listed = {f.path for f in manifest.files}
    assert {"MODEL_CARD.md", "quality.json", manifest.model} <= listed
    on_disk = {p.name for p in folder.iterdir() if p.is_file()} - {"manifest.json"}
    assert on_disk == listed, "every file in the folder is listed, and nothing else"


def test_text_manifests_describe_the_graph(text_dir: Path) -> None:
    manifest = load_manifest(text_dir)
    config = json.loads((text_dir / "config.json").read_text())
    spec = manifest.text
    assert manifest.task == "text-generation" and manifest.engine == "onnxruntime"
    assert manifest.tokenizer == "tokenizer.json"
    assert spec is not None
    assert (spec.num_layers, spec.num_heads, spec.vocab_size, spec.context_length) == (
        config["n_layer"],
        config["n_head"],
        config["vocab_size"],
        config["n_positions"],
    )
    assert spec.head_dim * spec.num_heads == config["n_embd"]
    assert spec.eos_token_id == config["eos_token_id"]
    assert manifest.self_test.prompt
    suffix = text_dir.name.rsplit("-", 1)[-1]
    assert manifest.quantization == (suffix if suffix in ("int8", "int4") else "fp32")


def test_model_cards_carry_the_quality_figures(text_dir: Path) -> None:
    card = (text_dir / "MODEL_CARD.md").read_text()
    quality = json.loads((text_dir / "quality.json").read_text())
    assert set(quality) == {"fp32", "int8", "int4"}
    for figures in quality.values():
        assert f"{figures['perplexity']:.2f}" in card
    assert "make models" in card and "r-cran-janeaustenr" in card


def test_image_manifests(image_dir: Path) -> None:
    manifest = load_manifest(image_dir)
    assert manifest.task == "image-generation"
    assert manifest.image is not None
    assert (manifest.image.width, manifest.image.height, manifest.image.channels) == (8, 8, 1)
    assert (manifest.image.num_classes, manifest.image.latent_dim) == (10, 8)
    assert manifest.self_test.image_class is not None
    expected = "onnxruntime" if image_dir.name.endswith("-onnx") else "tflite"
    assert manifest.engine == expected
