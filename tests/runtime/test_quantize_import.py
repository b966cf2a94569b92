"""`fleetgen model import` (with int8 / int4 quantization) and the quantized variants."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from agent.manifest import load_manifest, verify_files
from agent.runtime import TextGenerator, load_model
from controller.cli import main as controller_main
from models.quantize import (
    QuantizeError,
    externalize,
    model_files,
    quantize_int4,
    quantize_int8,
)
from tests.runtime.conftest import ONE_THREAD


def ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize(
    ("fixture", "quant", "op"),
    [
        ("tiny_int8_dir", "int8", "MatMulInteger"),
        ("tiny_int4_dir", "int4", "MatMulNBits"),
    ],
)
def test_quantized_variants_load_and_generate(
    request: pytest.FixtureRequest, tiny_dir: Path, fixture: str, quant: str, op: str
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    manifest = load_manifest(folder)
    verify_files(folder, manifest)
    assert manifest.quantization == quant and manifest.text is not None
    assert manifest.text.num_layers == 2 and manifest.tokenizer == "tokenizer.json"
    # every weight MatMul is quantized, the untied LM head included (2 layers x 4 + 1)
    assert ops(folder / "model.onnx")[op] == 9
    # small models stay one file; big ones get external data (ADR 0013)
    assert [p.name for p in folder.glob("model.onnx*")] == ["model.onnx"]
    assert (folder / "model.onnx").stat().st_size < (tiny_dir / "model.onnx").stat().st_size / 2
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    result = gen.generate(gen.request("def f(x):", max_tokens=16, seed=0, ignore_eos=True))
    assert result.timings.generated_tokens == 16 and result.text


def test_plain_import_keeps_the_graph(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp32"
    assert controller_main(["model", "import", str(tiny_dir), "-o", str(out), "--name", "tiny-fp32"]) == 0
    manifest = load_manifest(out)
    assert manifest.name == "tiny-fp32" and manifest.quantization == "fp32"
    assert {f.path for f in manifest.files} >= {"model.onnx", "tokenizer.json", "config.json"}
    assert (out / "model.onnx").read_bytes() == (tiny_dir / "model.onnx").read_bytes()


def test_plain_import_records_the_graphs_quantization_not_the_folder_name(
    tiny_dir: Path, tiny_int4_dir: Path, tmp_path: Path
) -> None:
    import shutil

    named_int8 = tmp_path / "tiny-int8-export"  # an fp32 export whose name says int8
    shutil.copytree(tiny_dir, named_int8)
    assert controller_main(["model", "import", str(named_int8), "-o", str(tmp_path / "a"), "--name", "a"]) == 0
    assert load_manifest(tmp_path / "a").quantization == "fp32"
    int4_export = tmp_path / "export"  # an already 4-bit graph in an Optimum folder
    shutil.copytree(tiny_int4_dir, int4_export)
    (int4_export / "manifest.json").unlink()
    assert controller_main(["model", "import", str(int4_export), "-o", str(tmp_path / "b"), "--name", "b"]) == 0
    assert load_manifest(tmp_path / "b").quantization == "int4"


def test_import_refuses_non_empty_output(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    assert controller_main(["model", "import", str(tiny_dir), "-o", str(tmp_path / "x")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "x" / "keep").read_text() == "mine"


def test_import_refuses_a_non_optimum_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert controller_main(["model", "import", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "is not an Optimum ONNX export" in capsys.readouterr().err


def test_quantize_missing_source(tmp_path: Path) -> None:
    with pytest.raises(QuantizeError, match="does not exist"):
        quantize_int8(tmp_path / "none.onnx", tmp_path / "out.onnx")


def test_written_model_files_are_world_readable(tiny_int8_dir: Path, tiny_int4_dir: Path) -> None:
    for folder in (tiny_int8_dir, tiny_int4_dir):
        for p in folder.glob("model.onnx*"):
            assert p.stat().st_mode & 0o777 == 0o644, p


@pytest.mark.parametrize("quantize", [quantize_int8, quantize_int4, externalize])
def test_external_data_when_asked(tiny_dir: Path, tmp_path: Path, quantize: object) -> None:
    dst = tmp_path / "model.onnx"
    quantize(tiny_dir / "model.onnx", dst, external=True)  # type: ignore[operator]
    files = model_files(dst)
    assert files[0] == "model.onnx" and len(files) == 2 and files[1] in ("model.onnx_data", "model.onnx.data")
    a, b = onnx.load(str(dst)), onnx.load(str(tiny_dir / "model.onnx"))
    assert len(a.graph.node) > 0
    if quantize is externalize:
        wa = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
        wb = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_int4_quantizes_gemm_projections_too(tmp_path: Path) -> None:
    """Optimum exports GPT-2's projections as Gemm (bias, transB): int4 must quantize those
    weights as well, and compute the same function within 4-bit error."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    k, n = 64, 96
    w = rng.standard_normal((n, k)).astype(np.float32)  # transB: stored [N, K]
    bias = rng.standard_normal(n).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="proj")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    src = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    dst = tmp_path / "int4" / "model.onnx"
    dst.parent.mkdir()
    quantize_int4(src, dst)
    ops = [node.op_type for node in onnx.load(str(dst)).graph.node]
    assert "Gemm" not in ops and "MatMulNBits" in ops, ops
    x = rng.standard_normal((3, k)).astype(np.float32)
    y = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x @ w.T + bias
    assert np.abs(y - want).max() < 0.25 * np.abs(want).max()
    assert dst.stat().st_size < w.nbytes / 3  # 4-bit weights, not the fp32 matrix kept beside them
