"""A tiny class-conditional image generator, the same weights in ONNX and TFLite.

image = sigmoid(W2 relu(latent W1a + onehot(class) W1b + b1) + b2)   → [1, H*W]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.manifest import ImageSpec, ModelManifest, SelfTest, file_entries, write_manifest
from tests.runtime.tflite_writer import ACT_RELU, OP_ADD, OP_LOGISTIC, OPTIONS_ADD, TFLiteGraph

HEIGHT, WIDTH, CLASSES, LATENT, HIDDEN = 8, 8, 10, 16, 32


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1a": rng.standard_normal((LATENT, HIDDEN)).astype(np.float32) * 0.5,
        "w1b": rng.standard_normal((CLASSES, HIDDEN)).astype(np.float32),
        "b1": rng.standard_normal(HIDDEN).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((HIDDEN, HEIGHT * WIDTH)).astype(np.float32) * 0.5,
        "b2": rng.standard_normal(HEIGHT * WIDTH).astype(np.float32) * 0.1,
    }


def onnx_model(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes = [
        helper.make_node("MatMul", ["latent", "w1a"], ["a"]),
        helper.make_node("MatMul", ["class_onehot", "w1b"], ["c"]),
        helper.make_node("Add", ["a", "c"], ["ac"]),
        helper.make_node("Add", ["ac", "b1"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Sigmoid", ["o1"], ["image"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gen",
        [
            helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, LATENT]),
            helper.make_tensor_value_info("class_onehot", TensorProto.FLOAT, [1, CLASSES]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, HEIGHT * WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def tflite_model(w: dict[str, np.ndarray]) -> bytes:
    g = TFLiteGraph()
    latent = g.tensor("latent", (1, LATENT))
    onehot = g.tensor("class_onehot", (1, CLASSES))
    g.inputs = [latent, onehot]
    a = g.dense(latent, w["w1a"], w["b1"], "fc1a")
    c = g.dense(onehot, w["w1b"], None, "fc1b")
    h = g.op(OP_ADD, [a, c], "hidden", (1, HIDDEN), OPTIONS_ADD, ACT_RELU)
    o = g.dense(h, w["w2"], w["b2"], "fc2")
    g.outputs = [g.op(OP_LOGISTIC, [o], "image", (1, HEIGHT * WIDTH))]
    return g.to_bytes()


def write_folder(root: Path, engine: str, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    w = weights(seed)
    if engine == "onnxruntime":
        name = "generator.onnx"
        onnx.save(onnx_model(w), str(root / name))
    else:
        name = "generator.tflite"
        (root / name).write_bytes(tflite_model(w))
    manifest = ModelManifest(
        name=f"test-gen-{'onnx' if engine == 'onnxruntime' else 'tflite'}",
        version="1.0.0",
        task="image-generation",
        engine=engine,  # type: ignore[arg-type]
        model=name,
        files=file_entries(root, [name]),
        image=ImageSpec(
            width=WIDTH, height=HEIGHT, channels=1, num_classes=CLASSES, latent_dim=LATENT, pixel_range="0,1"
        ),
        self_test=SelfTest(image_class=1),
    )
    write_manifest(root, manifest)
    return root
