"""The torch-free parts of the recipes: the R data reader, the corpus paragraph splitter,
and the TFLite writer (when the `tflite` schema bindings of the recipes extra are there)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from models.recipes.rdata import RDataError, RObject, read_lazyload_db, unserialize
from models.recipes.text_corpus import paragraphs

_HEADER = b"X\n" + struct.pack(">iii", 2, 0x040200, 0x020300)
_NIL = struct.pack(">i", 254)


def _char(s: str) -> bytes:
    data = s.encode()
    return struct.pack(">ii", 9, len(data)) + data


def _strings(items: list[str]) -> bytes:
    return struct.pack(">ii", 16, len(items)) + b"".join(_char(s) for s in items)


def _ints(items: list[int]) -> bytes:
    return struct.pack(">ii", 13, len(items)) + struct.pack(f">{len(items)}i", *items)


def _named_list(names: list[str], items: list[bytes]) -> bytes:
    symbol = struct.pack(">i", 1) + _char("names")
    attributes = struct.pack(">i", 2 | 1 << 10) + symbol + _strings(names) + _NIL
    return struct.pack(">ii", 19 | 1 << 9, len(items)) + b"".join(items) + attributes


def _lazyload_db(folder: Path, objects: dict[str, bytes]) -> None:
    blob, where = b"", []
    for payload in objects.values():
        raw = _HEADER + payload
        chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
        where.append(_ints([len(blob), len(chunk)]))
        blob += chunk
    index = struct.pack(">ii", 19, 1) + _named_list(list(objects), where)
    (folder / "Rdata.rdb").write_bytes(blob)
    (folder / "Rdata.rdx").write_bytes(gzip.compress(_HEADER + index))


def test_reads_character_vectors_from_a_lazyload_db(tmp_path: Path) -> None:
    _lazyload_db(tmp_path, {"emma": _strings(["EMMA", "", "By Jane Austen"]), "n": _ints([7])})
    objects = read_lazyload_db(tmp_path)
    emma = objects["emma"]
    assert isinstance(emma, RObject) and emma.value == ["EMMA", "", "By Jane Austen"]
    assert isinstance(objects["n"], RObject) and objects["n"].value == [7]


def test_na_strings_and_unknown_types() -> None:
    na = struct.pack(">iii", 16, 1, 9) + struct.pack(">i", -1)
    obj = unserialize(_HEADER + na)
    assert isinstance(obj, RObject) and obj.value == [None]
    with pytest.raises(RDataError, match="type 99"):
        unserialize(_HEADER + struct.pack(">ii", 99, 0))
    with pytest.raises(RDataError, match="XDR"):
        unserialize(b"A\n" + _HEADER[2:])


def test_paragraphs_start_at_the_first_chapter_and_drop_headings() -> None:
    lines = [
        "PERSUASION", "", "by", "", "Jane Austen", "", "Chapter 1", "",
        "Sir Walter Elliot, of Kellynch Hall, in Somersetshire,", "was a man who, for his",
        "own amusement, never took up any book but the _Baronetage_.", "", "",
        "VOLUME II", "", "\"Yes,\" said she.", "", "THE END",
    ]  # fmt: skip
    assert paragraphs(lines) == [
        "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who, for his "
        "own amusement, never took up any book but the Baronetage.",
        '"Yes," said she.',
    ]


def _interpreter(content: bytes):  # type: ignore[no-untyped-def]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tflite_runtime = pytest.importorskip("tflite_runtime.interpreter")
        Interpreter = tflite_runtime.Interpreter
    interp = Interpreter(model_content=content)
    interp.allocate_tensors()
    return interp


def _run(content: bytes, label: np.ndarray, z: np.ndarray) -> np.ndarray:
    interp = _interpreter(content)
    index = {d["name"]: d["index"] for d in interp.get_input_details()}
    interp.set_tensor(index["label"], label)
    interp.set_tensor(index["z"], z)
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]))


def test_tflite_writer_float_and_int8_match_numpy() -> None:
    pytest.importorskip("tflite")
    from models.recipes import image_tflite

    rng = np.random.default_rng(0)
    sizes = [(16, 5), (16, 16), (4, 16)]
    layers = [(rng.normal(0, 0.5, s).astype(np.float32), rng.normal(0, 0.1, s[0]).astype(np.float32))
              for s in sizes]  # fmt: skip
    label = np.eye(3, dtype=np.float32)[[1]]
    z = rng.standard_normal((1, 2)).astype(np.float32)
    x = np.concatenate([label, z], axis=1)
    for i, (w, b) in enumerate(layers):
        x = x @ w.T + b
        x = np.maximum(x, 0) if i < 2 else x
    expected = (1 / (1 + np.exp(-x))).reshape(1, 2, 2, 1)
    fp32 = _run(image_tflite.float_model(layers, 3, 2, 2), label, z)
    np.testing.assert_allclose(fp32, expected, atol=1e-6)
    calibration = np.concatenate(
        [np.eye(3, dtype=np.float32)[rng.integers(0, 3, 500)], rng.standard_normal((500, 2))], axis=1
    ).astype(np.float32)
    quants = image_tflite.calibrate(layers, calibration)
    int8 = _run(image_tflite.int8_model(layers, quants, 3, 2, 2), label, z)
    assert np.abs(int8 - expected).max() < 0.05
