"""The committed image generators: ONNX and TFLite graphs have the declared shapes, produce
images in [0, 1], and the TFLite variants agree with ONNX within the stated tolerance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from agent.manifest import load_manifest
from tests.models.conftest import MODELS

IMAGE = MODELS / "image"
ONNX = IMAGE / "digits-cvae-onnx"
TFLITE = IMAGE / "digits-cvae-tflite"
TFLITE_INT8 = IMAGE / "digits-cvae-tflite-int8"


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pytest.skip("no TFLite interpreter installed (ai-edge-litert or tflite-runtime)")


def _inputs(batch: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.eye(10, dtype=np.float32)[np.arange(batch) % 10]
    return label, rng.standard_normal((batch, 8)).astype(np.float32)


def _onnx(label: np.ndarray, z: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(ONNX / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["image"], {"label": label, "z": z})[0])


def _tflite(folder: Path, label: np.ndarray, z: np.ndarray) -> np.ndarray:
    interp = _interpreter_class()(model_path=str(folder / "model.tflite"))
    index = {d["name"]: d["index"] for d in interp.get_input_details()}
    interp.resize_tensor_input(index["label"], list(label.shape))
    interp.resize_tensor_input(index["z"], list(z.shape))
    interp.allocate_tensors()
    interp.set_tensor(index["label"], label)
    interp.set_tensor(index["z"], z)
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))


def test_onnx_graph_shapes() -> None:
    sess = ort.InferenceSession(str(ONNX / "model.onnx"), providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    assert list(ins) == ["label", "z"]
    assert ins["label"].shape[1:] == [10] and ins["z"].shape[1:] == [8]
    assert [o.name for o in sess.get_outputs()] == ["image"]
    assert sess.get_outputs()[0].shape[1:] == [8, 8, 1]


@pytest.mark.parametrize("folder", [TFLITE, TFLITE_INT8], ids=lambda p: p.name)
def test_tflite_graph_shapes(folder: Path) -> None:
    interp = _interpreter_class()(model_path=str(folder / "model.tflite"))
    ins = {d["name"]: d for d in interp.get_input_details()}
    assert list(ins) == ["label", "z"]
    assert list(ins["label"]["shape_signature"]) == [-1, 10]
    assert list(ins["z"]["shape_signature"]) == [-1, 8]
    assert all(d["dtype"] == np.float32 for d in ins.values()), "float I/O, even for int8"
    out = interp.get_output_details()[0]
    assert list(out["shape"]) == [1, 8, 8, 1] and out["dtype"] == np.float32


@pytest.mark.parametrize("batch", [1, 10])
def test_images_are_in_range_and_differ_by_class(batch: int) -> None:
    label, z = _inputs(batch)
    image = _onnx(label, z)
    assert image.shape == (batch, 8, 8, 1)
    assert image.min() >= 0.0 and image.max() <= 1.0
    if batch > 1:
        assert np.abs(image[0] - image[1]).mean() > 0.05


def test_tflite_agrees_with_onnx_within_the_stated_tolerance() -> None:
    tolerance = json.loads((ONNX / "quality.json").read_text())["tolerance"]
    label, z = _inputs(50)
    reference = _onnx(label, z)
    fp32 = _tflite(TFLITE, label, z)
    int8 = _tflite(TFLITE_INT8, label, z)
    assert fp32.shape == int8.shape == reference.shape
    assert np.abs(fp32 - reference).max() <= tolerance["tflite_fp32_max_abs"]
    assert np.abs(int8 - reference).mean() <= tolerance["tflite_int8_mean_abs"]


def test_quality_figures_are_recorded() -> None:
    for folder in (ONNX, TFLITE, TFLITE_INT8):
        quality = json.loads((folder / "quality.json").read_text())
        assert quality["agreement"][folder.name] >= 0.9
        assert f"{quality['agreement'][folder.name] * 100:.1f}%" in (
            folder / "MODEL_CARD.md"
        ).read_text()
        assert load_manifest(folder).image is not None
