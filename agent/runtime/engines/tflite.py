"""TFLite engine plugin: `tflite_runtime` first, `ai_edge_litert` when that is what is installed.

Quantized (int8/uint8) inputs and outputs are (de)quantized here with the tensor's own
scale and zero point, so callers always feed and receive float arrays.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.runtime.engine import EngineOptions, TensorInfo
from agent.runtime.errors import EngineError, ModelLoadError, UnknownEngineError

log = logging.getLogger(__name__)

KIND: Literal["tflite"] = "tflite"


def _tflite_runtime_usable() -> bool:
    """tflite_runtime stopped at 2.14, built against NumPy 1: under NumPy 2 it imports, then
    fails on the first model. Decide from versions, without importing it (the import
    alone prints a long ABI warning)."""
    from importlib import metadata

    try:
        version = metadata.version("tflite-runtime")
    except metadata.PackageNotFoundError:
        return False
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if int(np.__version__.split(".")[0]) >= 2 and major_minor < (2, 15):
        log.info("tflite_runtime %s is built for NumPy 1 (have %s); not using it", version, np.__version__)
        return False
    return True


def interpreter_class() -> Any:
    """`tflite_runtime`'s Interpreter where usable, else `ai_edge_litert`'s."""
    if _tflite_runtime_usable():
        try:
            from tflite_runtime.interpreter import Interpreter

            return Interpreter
        except ImportError as e:
            log.info("tflite_runtime not importable (%s); trying ai_edge_litert", e)
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        raise UnknownEngineError(
            "engine tflite: neither a usable tflite_runtime nor ai_edge_litert is installed"
        ) from None


def _info(detail: dict[str, Any]) -> TensorInfo:
    dtype = np.dtype(detail["dtype"])
    scale, _zero = detail.get("quantization", (0.0, 0))
    if dtype in (np.int8, np.uint8) and scale:
        dtype = np.dtype(np.float32)  # we (de)quantize at the boundary
    return TensorInfo(detail["name"], dtype, tuple(int(d) for d in detail["shape"]))


def _quantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype in (np.int8, np.uint8) and scale and value.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(dtype)
    return value.astype(dtype, copy=False)


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if value.dtype in (np.int8, np.uint8) and scale:
        return (value.astype(np.float32) - zero) * np.float32(scale)
    return value


class TFLiteEngine:
    kind = KIND

    def __init__(self, interpreter: Any, path: Path) -> None:
        self.interpreter = interpreter
        self.path = path
        self._in = interpreter.get_input_details()
        self._out = interpreter.get_output_details()
        self.inputs = [_info(d) for d in self._in]
        self.outputs = [_info(d) for d in self._out]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self.interpreter
        try:
            for detail in self._in:
                value = _quantize(np.asarray(feeds[detail["name"]]), detail)
                if tuple(value.shape) != tuple(detail["shape"]):
                    it.resize_tensor_input(detail["index"], list(value.shape))
                    it.allocate_tensors()
                it.set_tensor(detail["index"], value)
            it.invoke()
            return {d["name"]: _dequantize(it.get_tensor(d["index"]).copy(), d) for d in self._out}
        except KeyError as e:
            raise EngineError(f"{self.path.name}: missing input {e}") from None
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"{self.path.name}: run failed: {e}") from None

    def close(self) -> None:
        self.interpreter = None


def _delegates(interpreter_cls: Any, libraries: tuple[str, ...]) -> list[Any]:
    """Load the board's TFLite delegates; one that cannot load is logged and skipped."""
    if not libraries:
        return []
    module = sys.modules[interpreter_cls.__module__]
    out = []
    for library in libraries:
        try:
            out.append(module.load_delegate(library))
            log.info("TFLite delegate %s loaded", library)
        except (ValueError, RuntimeError, OSError) as e:
            log.warning(
                "TFLite delegate %s not loadable (%s); falling back to CPU kernels",
                library,
                str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
            )
    return out


def load(path: Path, options: EngineOptions) -> TFLiteEngine:
    interpreter_cls = interpreter_class()
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    delegates = _delegates(interpreter_cls, options.tflite_delegates)
    try:
        try:
            interpreter = interpreter_cls(
                model_path=str(path), num_threads=options.threads, experimental_delegates=delegates or None
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            if not delegates:
                raise
            log.warning("TFLite delegates refused %s (%s); falling back to CPU kernels", path.name, e)
            interpreter = interpreter_cls(model_path=str(path), num_threads=options.threads)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load {path}: {str(e).strip().splitlines()[0]}") from None
    if options.providers:
        log.info("tflite does not use ONNX Runtime execution providers (%s)", ", ".join(options.providers))
    log.info("loaded %s with TFLite (threads %s)", path.name, options.threads or "default")
    return TFLiteEngine(interpreter, path)
