"""The digits decoder as TFLite: fp32, and full-integer int8 with float input and output
(QUANTIZE → int8 FULLY_CONNECTED x3 → DEQUANTIZE), activation ranges calibrated on the
float model the way TensorFlow's converter does with a representative dataset."""

from __future__ import annotations

import numpy as np

from models.recipes.tflite_writer import (
    BuiltinOperator,
    BuiltinOptions,
    GraphBuilder,
    Quant,
    concatenation_options,
    fully_connected_options,
    reshape_options,
)

Layers = list[tuple[np.ndarray, np.ndarray]]


def _io(g: GraphBuilder, num_classes: int, latent: int, side: int) -> tuple[int, int, int, int]:
    label = g.tensor("label", (1, num_classes), dynamic_batch=True)
    z = g.tensor("z", (1, latent), dynamic_batch=True)
    x = g.tensor("label_z", (1, num_classes + latent), dynamic_batch=True)
    g.op(BuiltinOperator.CONCATENATION, [label, z], [x], BuiltinOptions.ConcatenationOptions,
         concatenation_options(1))
    image = g.tensor("image", (1, side, side, 1), dynamic_batch=True)
    return label, z, x, image


def _tail(g: GraphBuilder, logits: int, image: int, side: int) -> None:
    probs = g.tensor("probs", (1, side * side), dynamic_batch=True)
    g.op(BuiltinOperator.LOGISTIC, [logits], [probs])
    shape = g.tensor("image_shape", (4,), np.int32, np.array([-1, side, side, 1], np.int32))
    g.op(BuiltinOperator.RESHAPE, [probs, shape], [image], BuiltinOptions.ReshapeOptions,
         reshape_options([-1, side, side, 1]))


def float_model(layers: Layers, num_classes: int, latent: int, side: int) -> bytes:
    g = GraphBuilder(description="fleetgen digits-cvae decoder (fp32)")
    label, z, x, image = _io(g, num_classes, latent, side)
    for i, (w, b) in enumerate(layers):
        wt = g.tensor(f"fc{i + 1}/weight", w.shape, np.float32, w.astype(np.float32))
        bt = g.tensor(f"fc{i + 1}/bias", b.shape, np.float32, b.astype(np.float32))
        out = g.tensor(f"fc{i + 1}/out", (1, w.shape[0]), dynamic_batch=True)
        last = i == len(layers) - 1
        g.op(BuiltinOperator.FULLY_CONNECTED, [x, wt, bt], [out],
             BuiltinOptions.FullyConnectedOptions, fully_connected_options(relu=not last))
        x = out
    _tail(g, x, image, side)
    return g.serialize([label, z], [image])


def activation_quant(values: np.ndarray) -> Quant:
    """Asymmetric int8 over the observed range, widened to include 0 (as TFLite requires)."""
    lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
    scale = max(hi - lo, 1e-8) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant(scale, zero_point)


def calibrate(layers: Layers, inputs: np.ndarray) -> list[Quant]:
    """Ranges of the decoder input and of each layer's output on calibration inputs."""
    quants = [activation_quant(inputs)]
    x = inputs
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
        quants.append(activation_quant(x))
    return quants


def int8_model(layers: Layers, quants: list[Quant], num_classes: int, latent: int,
               side: int) -> bytes:
    """Weights symmetric per-tensor int8, biases int32 at input_scale * weight_scale."""
    g = GraphBuilder(description="fleetgen digits-cvae decoder (int8)")
    label, z, x, image = _io(g, num_classes, latent, side)
    xq = g.tensor("label_z/int8", (1, num_classes + latent), np.int8, quant=quants[0],
                  dynamic_batch=True)
    g.op(BuiltinOperator.QUANTIZE, [x], [xq])
    for i, (w, b) in enumerate(layers):
        w_scale = float(np.abs(w).max()) / 127.0
        wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        b_scale = quants[i].scale * w_scale
        bq = np.round(b / b_scale).astype(np.int32)
        wt = g.tensor(f"fc{i + 1}/weight", w.shape, np.int8, wq, Quant(w_scale, 0))
        bt = g.tensor(f"fc{i + 1}/bias", b.shape, np.int32, bq, Quant(b_scale, 0))
        out = g.tensor(f"fc{i + 1}/out", (1, w.shape[0]), np.int8, quant=quants[i + 1],
                       dynamic_batch=True)
        last = i == len(layers) - 1
        g.op(BuiltinOperator.FULLY_CONNECTED, [xq, wt, bt], [out],
             BuiltinOptions.FullyConnectedOptions, fully_connected_options(relu=not last))
        xq = out
    logits = g.tensor("logits", (1, side * side), dynamic_batch=True)
    g.op(BuiltinOperator.DEQUANTIZE, [xq], [logits])
    _tail(g, logits, image, side)
    return g.serialize([label, z], [image])
