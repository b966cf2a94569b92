"""`fleetgen model import` of fused graphs: onnxruntime-genai folders, Hugging Face checkpoints
(refusals; the builder itself needs torch and runs in tests/bench/peers.py), Optimum exports
through ORT's optimizer (`--fuse`), and what the manifest records."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest

from agent.manifest import load_manifest, verify_files
from agent.runtime import TextGenerator, load_model
from agent.runtime.gqa import SharedKVDecoder
from controller.cli import main as controller_main
from models import llama_gqa_onnx as tiny_llama
from tests.runtime.conftest import ONE_THREAD


@pytest.fixture(scope="module")
def genai_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama.write_genai_folder(tmp_path_factory.mktemp("g") / "tiny-llama", tiny_llama.TINY, seed=0)


def _greedy(gen: TextGenerator, n: int = 16) -> tuple[int, ...]:
    return gen.generate(gen.request("def f(x):", max_tokens=n, greedy=True, repetition_penalty=1.0,
                                    ignore_eos=True)).token_ids


def test_genai_folder_import_records_fusions_and_shared_cache(genai_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    assert controller_main(["model", "import", str(genai_dir), "-o", str(out), "--name", "tiny-llama"]) == 0
    manifest = load_manifest(out)
    verify_files(out, manifest)
    assert manifest.graph is not None
    g = manifest.graph
    assert (g.source, g.kv_cache, manifest.quantization) == ("genai-builder", "shared", "fp32")
    assert {"GroupQueryAttention", "SimplifiedLayerNormalization"} <= set(g.fusions)
    assert {f.path for f in manifest.files} >= {"model.onnx", "genai_config.json", "tokenizer.json"}
    gen = load_model(out, ONE_THREAD)
    ref = load_model(genai_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator) and isinstance(ref, TextGenerator)
    assert isinstance(gen.decoder, SharedKVDecoder) and gen.info.origin == "manifest"
    weights = tiny_llama.random_weights(tiny_llama.TINY, seed=0)
    assert list(_greedy(gen)) == tiny_llama.reference_greedy(weights, gen.encode_prompt("def f(x):"), 16)
    assert _greedy(gen) == _greedy(ref)
    gen.close()
    ref.close()


def test_genai_folder_cannot_be_quantized_again(genai_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert controller_main(["model", "import", str(genai_dir), "-o", str(tmp_path / "q"), "--quantize", "int4"]) == 2
    assert "import the Hugging Face checkpoint with --quantize int4" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def _checkpoint(folder: Path, arch: str) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "x"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_checkpoint_of_an_unsupported_architecture_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _checkpoint(tmp_path / "whisper", "WhisperForConditionalGeneration")
    assert controller_main(["model", "import", str(src), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "WhisperForConditionalGeneration is not supported" in err and "LlamaForCausalLM" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_without_the_builder_is_refused_saying_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _checkpoint(tmp_path / "llama", "LlamaForCausalLM")
    # a Python that cannot import onnxruntime_genai: a path that does not exist
    args = ["model", "import", str(src), "-o", str(tmp_path / "o"), "--builder-python", str(tmp_path / "nopython")]
    assert controller_main(args) == 2
    err = capsys.readouterr().err
    assert "onnxruntime-genai's model builder" in err and "--builder-python" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_the_builder_cannot_convert_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a "builder" that fails as the real one does on a broken checkpoint
    fake = tmp_path / "fakepy"
    (fake / "onnxruntime_genai" / "models").mkdir(parents=True)
    (fake / "onnxruntime_genai" / "__init__.py").write_text("")
    (fake / "onnxruntime_genai" / "models" / "__init__.py").write_text("")
    (fake / "onnxruntime_genai" / "models" / "builder.py").write_text(
        "import sys\nif __name__ == '__main__':\n    sys.exit('safetensors_rust.SafetensorError: header too small')\n"
    )
    wrapper = tmp_path / "py"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    src = _checkpoint(tmp_path / "llama", "LlamaForCausalLM")
    args = ["model", "import", str(src), "-o", str(tmp_path / "o"), "--builder-python", str(wrapper)]
    assert controller_main(args) == 2
    err = capsys.readouterr().err
    assert "builder could not convert" in err and "header too small" in err
    assert not (tmp_path / "o").exists()


def test_graph_with_an_unknown_custom_op_is_refused_naming_it(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "custom"
    shutil.copytree(tiny_dir, src)
    model = onnx.load(str(src / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Tanh")
    node.op_type, node.domain = "FancyTanh", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, str(src / "model.onnx"))
    # the runtime refuses to load it: the import names the op before that
    assert controller_main(["model", "import", str(src), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "com.example.FancyTanh" in err and "supported: standard ONNX operators" in err
    assert not (tmp_path / "o").exists()


def test_optimum_export_with_fusions(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fused"
    plain = tmp_path / "plain"
    assert controller_main(["model", "import", str(tiny_dir), "-o", str(out), "--fuse", "--name", "f"]) == 0
    assert controller_main(["model", "import", str(tiny_dir), "-o", str(plain), "--name", "p"]) == 0
    fused, unfused = load_manifest(out).graph, load_manifest(plain).graph
    assert fused is not None and unfused is not None
    assert fused.source == "optimum" and fused.kv_cache == "concat"
    assert fused.tool == "onnxruntime.transformers.optimizer" and unfused.tool == ""
    # the optimizer fused something the plain graph does not hold (GPT-2: SkipLayerNorm, FastGelu)
    assert set(fused.fusions) - set(unfused.fusions), (fused.fusions, unfused.fusions)
    a, b = load_model(out, ONE_THREAD), load_model(plain, ONE_THREAD)
    assert isinstance(a, TextGenerator) and isinstance(b, TextGenerator)
    assert _greedy(a) == _greedy(b)
    a.close()
    b.close()


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_fused_graph_quantizes(tiny_dir: Path, tmp_path: Path, precision: str) -> None:
    """`--fuse --quantize`: the quantizers' shape inference needs the fused ops' domain
    declared (it refused SkipLayerNormalization: "No opset import for domain com.microsoft")."""
    out = tmp_path / precision
    args = ["model", "import", str(tiny_dir), "-o", str(out), "--fuse", "--quantize", precision, "--name", "q"]
    assert controller_main(args) == 0
    manifest = load_manifest(out)
    assert manifest.graph is not None and manifest.graph.fusions
    generator = load_model(out, ONE_THREAD)
    assert isinstance(generator, TextGenerator)
    assert len(_greedy(generator)) > 0
    generator.close()
