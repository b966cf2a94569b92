"""The engine interface and the registry of engine plugins (one small module each).

An engine loads one model file and runs it on numpy arrays. Plugins live in
`agent.runtime.engines.<module>` and are imported only when a model of that kind is
loaded, so the agent's import footprint stays small (DESIGN §1).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.runtime.errors import UnknownEngineError
from agent.runtime.options import EngineOptions

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]


class Engine(Protocol):
    kind: str
    inputs: Sequence[TensorInfo]
    outputs: Sequence[TensorInfo]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; returns every output by name. Raises EngineError."""
        ...

    def close(self) -> None: ...


# engine name (as in the manifest) → plugin module under agent.runtime.engines
PLUGINS: dict[str, str] = {
    "onnxruntime": "onnx",
    "tflite": "tflite",
}


def open_engine(kind: str, path: Path, options: EngineOptions) -> Engine:
    """Load `path` with the plugin for `kind`."""
    module_name = PLUGINS.get(kind)
    if module_name is None:
        raise UnknownEngineError(f"unknown engine {kind!r} (known: {', '.join(sorted(PLUGINS))})")
    module = importlib.import_module(f"agent.runtime.engines.{module_name}")
    engine: Engine = module.load(Path(path), options)
    return engine
