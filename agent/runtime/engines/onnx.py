"""ONNX Runtime engine plugin."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.runtime.engine import EngineOptions, TensorInfo
from agent.runtime.errors import EngineError, ModelLoadError, UnknownEngineError
from agent.runtime.mapped import declared, open_mapped
from agent.runtime.providers import choose_providers

log = logging.getLogger(__name__)

KIND: Literal["onnxruntime"] = "onnxruntime"

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise UnknownEngineError(f"engine onnxruntime: cannot import onnxruntime ({e})") from None
    return onnxruntime


def _info(arg: Any) -> TensorInfo:
    dtype = _ORT_TYPES.get(arg.type)
    return TensorInfo(arg.name, np.dtype(dtype if dtype is not None else np.float32), tuple(arg.shape))


class OnnxEngine:
    kind = KIND

    def __init__(self, session: Any, path: Path) -> None:
        self.session = session
        self.path = path
        self.providers: list[str] = list(session.get_providers())
        inputs = [_info(a) for a in session.get_inputs()]
        self.outputs = [_info(a) for a in session.get_outputs()]
        # weights the graph takes as inputs, mapped from its data file (agent.runtime.mapped):
        # not part of what callers feed; decoders bind them once, `run` adds them
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        self.mapped: dict[str, np.ndarray] = open_mapped(
            declared(metadata, str(path)), path.parent, {t.name: t for t in inputs}, str(path)
        )
        self.inputs = [t for t in inputs if t.name not in self.mapped]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        try:
            values = self.session.run(names, {**feeds, **self.mapped})
        except Exception as e:  # ORT raises its own unrelated exception types; wrap them all
            raise EngineError(f"{self.path.name}: run failed: {_first_line(e)}") from None
        return dict(zip(names, values, strict=True))

    def close(self) -> None:
        self.session = None
        self.mapped = {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def session_options(options: EngineOptions) -> Any:
    ort = _import_ort()
    so = ort.SessionOptions()
    if options.threads is not None:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    # Spinning workers are ~15 % faster on cores the model has to itself and ~40 % slower on
    # shared ones, and burn power while waiting (ADR 0011, ADR 0060): load_model decides
    # from the situation (agent.runtime.spin); unresolved means the safe choice, no spin.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


def load(path: Path, options: EngineOptions) -> OnnxEngine:
    ort = _import_ort()
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    providers = choose_providers(options.providers, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), session_options(options), providers=providers)
    except Exception as e:  # InvalidProtobuf, Fail, NotImplemented...: all mean "cannot load"
        raise ModelLoadError(f"cannot load {path}: {_first_line(e)}") from None
    log.info(
        "loaded %s on %s (threads %s)",
        path.name,
        ", ".join(session.get_providers()),
        options.threads or "default",
    )
    return OnnxEngine(session, path)
