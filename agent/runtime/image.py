"""Image generation: a generator graph (ONNX or TFLite) from class label and/or latent to PNG.

Inputs are recognised by kind: an integer input is the class label ([batch] or
[batch, 1]); a float input named like `class`/`label`/`onehot` is a one-hot class
vector; any other float input is the latent, drawn from a standard normal with the
request's seed. The output is [batch, C, H, W], [batch, H, W, C] or [batch, H*W*C],
with values in the manifest's `pixel_range` ("0,1" or "-1,1"), mapped to 0..255.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.manifest import ImageSpec
from agent.runtime.engine import TensorInfo
from agent.runtime.errors import LayoutError, ModelLoadError, RequestError
from agent.runtime.loader import ModelInfo
from agent.runtime.png import encode_png

log = logging.getLogger(__name__)

_ONE_HOT_HINTS = ("class", "label", "onehot", "one_hot", "cond")


@dataclass(frozen=True)
class ImageRequest:
    class_id: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class ImageResult:
    png: bytes
    pixels: np.ndarray  # uint8 [H, W, C]
    values: np.ndarray  # the generator's raw float output, [H, W, C]
    class_id: int | None
    seed: int
    load_ms: float
    run_ms: float


def _role(t: TensorInfo) -> str:
    if t.dtype.kind in "iu":
        return "class"
    if any(h in t.name.lower() for h in _ONE_HOT_HINTS):
        return "onehot"
    return "latent"


class ImageGenerator:
    def __init__(self, info: ModelInfo, engine: Any, load_ms: float = 0.0) -> None:
        if info.image is None:
            raise ModelLoadError(f"{info.name}: image generation needs an 'image' section")
        self.info = info
        self.spec: ImageSpec = info.image
        self.engine = engine
        self.load_ms = load_ms
        self.roles = {t.name: _role(t) for t in engine.inputs}
        origin = str(info.model_path)
        if len(engine.outputs) < 1:
            raise LayoutError(f"{origin}: generator has no output")
        if self.spec.num_classes == 0 and any(r in ("class", "onehot") for r in self.roles.values()):
            raise LayoutError(f"{origin}: graph takes a class input but num_classes is 0")
        if self.spec.num_classes > 0 and not any(r in ("class", "onehot") for r in self.roles.values()):
            raise LayoutError(f"{origin}: num_classes is {self.spec.num_classes} but the graph has no class input")
        for t in engine.inputs:
            last = t.shape[-1] if t.shape else None
            want = (
                self.spec.latent_dim
                if self.roles[t.name] == "latent"
                else (self.spec.num_classes if self.roles[t.name] == "onehot" else None)
            )
            if want is not None and isinstance(last, int) and last != want:
                raise LayoutError(f"{origin}: input {t.name} has last dimension {last}, declared {want}")
        self._output = engine.outputs[0].name

    def class_of(self, request: ImageRequest) -> int | None:
        """The class the image will show: the request's, checked; 0 when none is asked for."""
        class_id, n = request.class_id, self.spec.num_classes
        if n == 0:
            if class_id is not None:
                raise RequestError(f"{self.info.name} is not class-conditional; drop --class")
            return None
        if class_id is None:
            return 0
        if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < n:
            raise RequestError(f"class must be in 0..{n - 1}, got {class_id!r}")
        return class_id

    def feeds(self, request: ImageRequest, seed: int) -> dict[str, np.ndarray]:
        spec = self.spec
        class_id = self.class_of(request)
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for t in self.engine.inputs:
            role = self.roles[t.name]
            if role == "class":
                shape = (1,) if len(t.shape) <= 1 else (1, 1)
                out[t.name] = np.full(shape, class_id, dtype=t.dtype)
            elif role == "onehot":
                vec = np.zeros((1, spec.num_classes), dtype=np.float32)
                vec[0, class_id or 0] = 1.0
                out[t.name] = vec.astype(t.dtype)
            else:
                out[t.name] = rng.standard_normal((1, spec.latent_dim)).astype(t.dtype)
        return out

    def generate(self, request: ImageRequest) -> ImageResult:
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        if request.seed is not None and (not isinstance(seed, int) or seed < 0):
            raise RequestError(f"seed must be an integer >= 0, got {seed!r}")
        feeds = self.feeds(request, seed)
        t0 = time.perf_counter()
        raw = self.engine.run(feeds)[self._output]
        run_ms = (time.perf_counter() - t0) * 1000
        values = to_hwc(np.asarray(raw, dtype=np.float32), self.spec, str(self.info.model_path))
        pixels = to_uint8(values, self.spec.pixel_range)
        return ImageResult(
            png=encode_png(pixels),
            pixels=pixels,
            values=values,
            class_id=self.class_of(request),
            seed=seed,
            load_ms=self.load_ms,
            run_ms=run_ms,
        )

    def close(self) -> None:
        self.engine.close()


def to_hwc(raw: np.ndarray, spec: ImageSpec, origin: str) -> np.ndarray:
    """The first image of a batch as [H, W, C], whatever layout the generator uses."""
    h, w, c = spec.height, spec.width, spec.channels
    img = raw[0] if raw.ndim >= 2 else raw
    if img.shape == (c, h, w):
        return np.ascontiguousarray(np.transpose(img, (1, 2, 0)))
    if img.shape == (h, w, c):
        return img
    if img.shape == (h, w) and c == 1:
        return img[:, :, None]
    if img.size == h * w * c:
        return img.reshape(h, w, c)
    raise LayoutError(f"{origin}: output shape {tuple(raw.shape)} does not hold a {h}x{w}x{c} image")


def to_uint8(values: np.ndarray, pixel_range: str) -> np.ndarray:
    unit = (values + 1.0) / 2.0 if pixel_range == "-1,1" else values
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)
