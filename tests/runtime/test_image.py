"""Image generation: PNG out of ONNX and TFLite generators, and their agreement."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import ImageGenerator, ImageRequest, load_model
from agent.runtime.errors import RequestError
from agent.runtime.image import to_uint8
from agent.runtime.png import encode_png
from tests.runtime.conftest import ONE_THREAD, shipped
from tests.runtime.image_models import HEIGHT, WIDTH

# Same float weights, two runtimes: differences are float rounding only.
VALUE_TOLERANCE = 1e-5


def load(folder: Path) -> ImageGenerator:
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, ImageGenerator)
    return gen


def decode_png(data: bytes) -> np.ndarray:
    """Read back what `encode_png` writes (8-bit, filter type 0 only), checking each CRC."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, _depth, color = struct.unpack(">IIBB", header[:10])
    channels = {0: 1, 2: 3, 6: 4}[color]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    if raw[:, 0].any():
        raise ValueError("only filter type 0 is supported")
    return raw[:, 1:].reshape(height, width, channels)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("engine", ["onnxruntime", "tflite"])
def test_generator_writes_png_of_declared_size(image_dirs: dict[str, Path], engine: str) -> None:
    result = load(image_dirs[engine]).generate(ImageRequest(class_id=3, seed=1))
    assert png_size(result.png) == (WIDTH, HEIGHT)
    assert decode_png(result.png).shape == (HEIGHT, WIDTH, 1)
    assert np.array_equal(decode_png(result.png), result.pixels)
    assert result.pixels.std() > 0


def test_onnx_and_tflite_agree(image_dirs: dict[str, Path]) -> None:
    a, b = load(image_dirs["onnxruntime"]), load(image_dirs["tflite"])
    for cls in range(10):
        ra, rb = a.generate(ImageRequest(class_id=cls, seed=cls)), b.generate(ImageRequest(class_id=cls, seed=cls))
        assert np.abs(ra.values - rb.values).max() <= VALUE_TOLERANCE
        assert np.abs(ra.pixels.astype(int) - rb.pixels.astype(int)).max() <= 1


def test_seed_and_class_determine_the_image(image_dirs: dict[str, Path]) -> None:
    gen = load(image_dirs["onnxruntime"])
    one = gen.generate(ImageRequest(class_id=2, seed=5)).png
    assert gen.generate(ImageRequest(class_id=2, seed=5)).png == one
    assert gen.generate(ImageRequest(class_id=3, seed=5)).png != one


def test_default_class_is_zero_and_reported(image_dirs: dict[str, Path]) -> None:
    gen = load(image_dirs["onnxruntime"])
    default = gen.generate(ImageRequest(seed=4))
    assert default.class_id == 0
    assert default.png == gen.generate(ImageRequest(class_id=0, seed=4)).png


@pytest.mark.parametrize("cls", [-1, 10, 99])
def test_class_out_of_range(image_dirs: dict[str, Path], cls: int) -> None:
    gen = load(image_dirs["tflite"])
    with pytest.raises(RequestError, match=r"class must be in 0..9"):
        gen.generate(ImageRequest(class_id=cls))
    assert gen.generate(ImageRequest(class_id=1)).png  # still serving


def test_png_encoder_rgb_and_crc() -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    data = encode_png(pixels)
    assert png_size(data) == (3, 2)
    assert np.array_equal(decode_png(data), pixels)
    (length,) = struct.unpack(">I", data[8:12])
    crc = struct.unpack(">I", data[16 + length : 20 + length])[0]
    assert crc == zlib.crc32(data[12 : 16 + length]) & 0xFFFFFFFF


def test_pixel_ranges() -> None:
    v = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    assert to_uint8(v, "-1,1").tolist() == [0, 128, 191, 255, 255]
    assert to_uint8(v, "0,1").tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize("folder", shipped("image") or [None], ids=lambda p: p and p.name)
def test_shipped_image_models(folder: Path | None) -> None:
    if folder is None:
        pytest.fail("no shipped image model under models/image (they are committed artifacts)")
    gen = load(folder)
    meta = json.loads((folder / "manifest.json").read_text())
    result = gen.generate(ImageRequest(class_id=0 if meta["image"].get("num_classes") else None, seed=0))
    assert png_size(result.png) == (meta["image"]["width"], meta["image"]["height"])


def _shipped_generators() -> dict[str, ImageGenerator]:
    folders = {p.name: p for p in shipped("image")}
    wanted = ("digits-cvae-onnx", "digits-cvae-tflite", "digits-cvae-tflite-int8")
    if not all(w in folders for w in wanted):
        pytest.fail("shipped digits generators (onnx, tflite, tflite-int8) not under models/image")
    return {w: load(folders[w]) for w in wanted}


def test_shipped_onnx_and_tflite_agree_within_model_card_tolerance() -> None:
    # MODEL_CARD.md of the digits generators: TFLite fp32 max abs diff <= 1e-4,
    # TFLite int8 mean abs diff <= 0.02 (values in [0, 1]), against ONNX on the same inputs.
    gens = _shipped_generators()
    for cls in range(10):
        out = {n: g.generate(ImageRequest(class_id=cls, seed=100 + cls)) for n, g in gens.items()}
        ref = out["digits-cvae-onnx"]
        assert png_size(ref.png) == (8, 8)
        assert np.abs(out["digits-cvae-tflite"].values - ref.values).max() <= 1e-4
        assert np.abs(out["digits-cvae-tflite-int8"].values - ref.values).mean() <= 0.02
