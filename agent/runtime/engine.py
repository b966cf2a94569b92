"""The engine interface and the registry of engine plugins (one small module each).

An engine loads one model file and runs it on numpy arrays. Plugins live in
`agent.runtime.engines.<module>` and are imported only when a model of that kind is
loaded, so the agent's import footprint stays small (DESIGN §1).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.runtime.errors import RequestError, UnknownEngineError

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model. `threads` is what the power governor turns (None: library default);
    `providers` is the board profile's ONNX Runtime preference, short or full names;
    `tflite_delegates` the board's TFLite delegate libraries."""

    threads: int | None = None
    providers: tuple[str, ...] = field(default_factory=tuple)
    # TFLite delegate libraries to try, best first (firmware TfliteDelegate.library)
    tflite_delegates: tuple[str, ...] = field(default_factory=tuple)
    # ORT intra-op workers spin between parallel sections: None = decide at load from the
    # situation (agent.runtime.spin); True/False = as set (the governor sets False when a
    # power budget binds)
    spin: bool | None = None
    budget_binding: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None and not 1 <= self.threads <= 256:
            raise RequestError(f"threads must be in 1..256, got {self.threads}")


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
