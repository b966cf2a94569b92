"""Graph inputs the agent maps read-only from the model's own data file (ADR 0103).

`fleetgen model import` turns a tied fp32 embedding / LM head weight into a graph input so that
ONNX Runtime neither prepacks nor constant-folds private copies of it
(models/shared_tables.py). The graph names where the bytes are in its metadata:

    fleetgen.mapped_input.<input name> = {"file": "model.onnx.data", "offset": 2214144,
                                          "dtype": "float32", "shape": [576, 49152]}

`open_mapped` checks each entry against the session's inputs and the file (a plain name in the
model's folder, the range inside it) and maps it with numpy; the decoders bind the arrays once,
and `OnnxEngine.run` adds them to every feed. The pages live in the page cache: shared with
other processes reading the same file and reclaimable under memory pressure, as llama.cpp's
mmapped weights are. Importable without numpy (the importer writes the metadata).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from agent.runtime.errors import ModelLoadError

METADATA_PREFIX = "fleetgen.mapped_input."
_DTYPES = {"float32": 4, "float16": 2, "uint8": 1, "int8": 1}


@dataclass(frozen=True)
class MappedInput:
    name: str
    file: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * _DTYPES[self.dtype]

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "offset": self.offset, "dtype": self.dtype, "shape": list(self.shape)})


def parse(name: str, value: str, origin: str) -> MappedInput:
    """One metadata entry; a malformed one is a refusal naming the input and the field."""
    where = f"{origin}: mapped input {name!r}"
    try:
        doc = json.loads(value)
    except ValueError as e:
        raise ModelLoadError(f"{where}: metadata is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{where}: metadata must be an object")
    file, offset, dtype, shape = doc.get("file"), doc.get("offset"), doc.get("dtype"), doc.get("shape")
    if not isinstance(file, str) or not file or "/" in file or "\\" in file or file.startswith("."):
        raise ModelLoadError(f"{where}: file must be a plain file name in the model folder, got {file!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ModelLoadError(f"{where}: offset must be a non-negative integer, got {offset!r}")
    if dtype not in _DTYPES:
        raise ModelLoadError(f"{where}: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
        raise ModelLoadError(f"{where}: shape must be 1 to 4 positive integers, got {shape!r}")
    return MappedInput(name, file, offset, dtype, tuple(shape))


def declared(metadata: Mapping[str, str], origin: str) -> list[MappedInput]:
    return [parse(k[len(METADATA_PREFIX):], v, origin) for k, v in sorted(metadata.items())
            if k.startswith(METADATA_PREFIX)]


def open_mapped(entries: Sequence[MappedInput], folder: Path, inputs: Mapping[str, Any],
                origin: str) -> dict[str, Any]:
    """Map each entry read-only; `inputs` are the session's input infos (name -> TensorInfo)."""
    import numpy as np

    arrays: dict[str, Any] = {}
    for m in entries:
        where = f"{origin}: mapped input {m.name!r}"
        info = inputs.get(m.name)
        if info is None:
            raise ModelLoadError(f"{where} is not an input of the graph")
        if np.dtype(info.dtype) != np.dtype(m.dtype) or tuple(info.shape) != m.shape:
            raise ModelLoadError(f"{where}: metadata says {m.dtype} {list(m.shape)}, the graph takes "
                                 f"{np.dtype(info.dtype)} {list(info.shape)}")
        path = folder / m.file
        if not path.is_file():
            raise ModelLoadError(f"{where}: {m.file} is missing from {folder}")
        size = path.stat().st_size
        if m.offset + m.nbytes > size:
            raise ModelLoadError(f"{where}: bytes {m.offset}..{m.offset + m.nbytes} lie beyond the end of "
                                 f"{m.file} ({size} bytes)")
        arrays[m.name] = np.memmap(path, dtype=m.dtype, mode="r", offset=m.offset, shape=m.shape)
    return arrays


def bind_all(bind_in: Any, dev: Any, arrays: Mapping[str, Any]) -> None:
    """Bind each mapped array as an input once (IO bindings persist across runs)."""
    for name, a in arrays.items():
        bind_in(name, dev, a.dtype.type, list(a.shape), a.ctypes.data)
