"""Quantize ONNX decoders: int8 dynamic (weights int8, activations quantized at run time)
and 4-bit weight-only (MatMulNBits, block 32, accuracy level 4 = int8 compute).

    from models.quantize import quantize_int8, quantize_int4
    quantize_int8(Path("fp32/model.onnx"), Path("int8/model.onnx"))

Models of `EXTERNAL_DATA_MIN_BYTES` or more (or any, with `external=True`) are written
with their weights as ONNX external data next to the graph (`model.onnx` +
`model.onnx.data`, the name ONNX Runtime's int8 quantizer uses, so every path writes the
same one; Optimum's exports call theirs `model.onnx_data`): ONNX Runtime maps external
data into memory instead of parsing it out of the protobuf, which drops the peak RSS at load
from ~1.5x to ~0.9x of the file size on GPT-2-small (ADR 0013) and lifts the 2 GiB protobuf
limit. Smaller models stay one file. `model_files(dst)` lists what was written.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.errors import FleetgenError
from agent.manifest import Quantization

log = logging.getLogger(__name__)

INT4_BLOCK = 32
INT4_ACCURACY_LEVEL = 4  # int8 activations in the MatMulNBits kernel: the fast path on CPU
EXTERNAL_DATA_MIN_BYTES = 32 * 2**20
# What fleetgen names a graph's external data: `model.onnx.data`, as quantize_dynamic does.
EXTERNAL_DATA_SUFFIX = ".data"


class QuantizeError(FleetgenError):
    """Quantization failed; the message names the model and the step."""

    exit_code = 2


class _OrtDetailToDebug(logging.Filter):
    """ONNX Runtime's quantizers log ~100 INFO lines per model (one per tensor they skip, on
    the root logger and their own) and a WARNING advising pre-processing we deliberately
    skip. They are detail: demoted to DEBUG, shown only when the user asks for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR and "onnxruntime" in record.pathname:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


@contextlib.contextmanager
def _ort_detail_at_debug() -> Iterator[None]:
    # On the root's handlers: records of every logger (the root's own included) pass there.
    detail = _OrtDetailToDebug()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(detail)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(detail)


def _source_bytes(src: Path) -> int:
    data = [p for p in src.parent.iterdir() if p.name.startswith(src.name) and p != src]
    return src.stat().st_size + sum(p.stat().st_size for p in data)


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise QuantizeError(f"model {src} does not exist")
    if src.resolve() == dst.resolve():
        raise QuantizeError(f"quantized output {dst} would overwrite its source")
    dst.parent.mkdir(parents=True, exist_ok=True)


def _external(src: Path, external: bool | None) -> bool:
    return external if external is not None else _source_bytes(src) >= EXTERNAL_DATA_MIN_BYTES


def model_files(graph: Path) -> list[str]:
    """Names of the graph file and its external data files (`model.onnx_data`,
    `model.onnx.data`, ...) next to it, for the manifest."""
    name = graph.name
    return sorted(
        p.name
        for p in graph.parent.iterdir()
        if p.is_file() and (p.name == name or p.name.startswith((name + "_", name + ".")))
    )


def quantize_int8(src: Path, dst: Path, external: bool | None = None) -> Path:
    """int8 dynamic quantization of every MatMul with a constant weight (and the embedding).

    Activation x activation MatMuls (attention scores) stay in float: quantizing them on
    the fly costs accuracy and buys no speed at decode time.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    _check_paths(src, dst)
    try:
        with _ort_detail_at_debug():
            quantize_dynamic(
                src,
                dst,
                weight_type=QuantType.QInt8,
                per_channel=False,
                use_external_data_format=_external(src, external),
                # DefaultTensorType: ONNX shape inference cannot type the outputs of fused
                # com.microsoft ops (a `--fuse` import); the decoders here are float32 throughout.
                extra_options={"MatMulConstBOnly": True, "DefaultTensorType": 1},
            )
    except Exception as e:  # onnxruntime.quantization raises plain Exceptions of many kinds
        raise QuantizeError(f"int8 quantization of {src} failed: {_line(e)}") from None
    _readable(dst)
    log.info("int8: %s -> %s (%d -> %d bytes)", src, dst, _source_bytes(src), _source_bytes(dst))
    return dst


def quantize_int4(src: Path, dst: Path, block_size: int = INT4_BLOCK, external: bool | None = None) -> Path:
    """4-bit weight-only quantization of MatMul weights into MatMulNBits (symmetric blocks).

    The embedding Gather stays fp32 (the quantizer only rewrites MatMuls), so the file can
    be larger than the int8 one; the LM head, an untied MatMul, is quantized. Gemm nodes with
    a constant weight become MatMul (+ Add) first: Optimum exports GPT-2's projections as Gemm,
    which the quantizer skips, and an "int4" GPT-2 stayed at 90% of its fp32 size.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    src, dst = Path(src), Path(dst)
    _check_paths(src, dst)
    try:
        model = onnx.load(str(src))
        rewritten = gemm_as_matmul(model)
        if rewritten:
            log.info("int4: %d Gemm nodes with constant weights rewritten as MatMul + Add", rewritten)
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=INT4_ACCURACY_LEVEL,
        )
        with _ort_detail_at_debug():
            quantizer.process()
        out: Any = quantizer.model
        _save(out.model if hasattr(out, "model") else out, dst, _external(src, external))
    except QuantizeError:
        raise
    except Exception as e:
        raise QuantizeError(f"int4 quantization of {src} failed: {_line(e)}") from None
    log.info("int4: %s -> %s (%d -> %d bytes)", src, dst, _source_bytes(src), _source_bytes(dst))
    return dst


def gemm_as_matmul(model: Any) -> int:
    """Rewrite, in place, each `Gemm(A, W, C)` whose weight W is an initializer (alpha = beta =
    1, A not transposed) as `MatMul(A, W or its transpose)` followed by `Add(C)`: the same
    function on the 2-D inputs Gemm takes. Returns how many were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[Any] = []
    transposed: dict[str, str] = {}
    rewritten = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            if weight not in transposed:
                w = np.ascontiguousarray(numpy_helper.to_array(inits[weight]).T)
                transposed[weight] = f"{weight}_transposed"
                model.graph.initializer.append(numpy_helper.from_array(w, transposed[weight]))
            weight = transposed[weight]
        name = node.name or f"gemm_{rewritten}"
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{name}_MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]], name=f"{name}_Add"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [i for i in model.graph.initializer if i.name in used or i.name not in transposed]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return rewritten


def externalize(src: Path, dst: Path, external: bool | None = None) -> Path:
    """Rewrite an ONNX model to `dst`, weights as external data (`<dst name>.data`) when it is
    large (or `external=True`)."""
    import onnx

    src, dst = Path(src), Path(dst)
    _check_paths(src, dst)
    try:
        _save(onnx.load(str(src)), dst, _external(src, external))
    except Exception as e:
        raise QuantizeError(f"cannot rewrite {src} with external data: {_line(e)}") from None
    return dst


_INT8_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeLinear"}


def graph_quantization(src: Path) -> Quantization:
    """What the graph itself says about its weights: `int4` (4-bit MatMulNBits), `int8`
    (integer MatMuls), `fp16` (half-precision float initializers), else `fp32`."""
    import onnx

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # DecodeError and OSError alike: the graph is unreadable
        raise QuantizeError(f"cannot read {src}: {_line(e)}") from None
    ops = {n.op_type for n in model.graph.node}
    if "MatMulNBits" in ops:
        return "int4"
    if ops & _INT8_OPS:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def has_external_data(src: Path) -> bool:
    return len(model_files(src)) > 1


def _save(model: Any, dst: Path, external: bool) -> None:
    import onnx

    # write next to the destination first so a failed save leaves no half file behind
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        tmp_path = Path(tmp) / dst.name
        onnx.save_model(
            model,
            str(tmp_path),
            save_as_external_data=external,
            location=dst.name + EXTERNAL_DATA_SUFFIX if external else None,
            size_threshold=1024,
        )
        for produced in Path(tmp).iterdir():
            shutil.move(str(produced), dst.parent / produced.name)
    _readable(dst)


def _readable(dst: Path) -> None:
    """onnx writes external data 0600; a model folder is read by the agent's service user."""
    for p in dst.parent.iterdir():
        if p.name.startswith(dst.name):
            p.chmod(0o644)


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
