"""Model folders: Optimum inference from config.json, and every way a folder can be bad."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.errors import FleetgenError
from agent.manifest import ModelManifest, TextSpec, file_entries, write_manifest
from agent.runtime import EngineOptions, TextGenerator, load_model
from agent.runtime.engine import TensorInfo
from agent.runtime.errors import LayoutError, ModelLoadError, UnknownEngineError
from agent.runtime.optimum import generation_defaults, text_spec
from tests.runtime.conftest import ONE_THREAD

F32, I64 = np.dtype(np.float32), np.dtype(np.int64)


def graph_io(layers: int, kv_heads: int | str, head_dim: int | str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    ins = [TensorInfo("input_ids", I64, ("b", "s")), TensorInfo("attention_mask", I64, ("b", "t"))]
    outs = [TensorInfo("logits", F32, ("b", "s", 100))]
    for i in range(layers):
        for k in ("key", "value"):
            ins.append(TensorInfo(f"past_key_values.{i}.{k}", F32, ("b", kv_heads, "p", head_dim)))
            outs.append(TensorInfo(f"present.{i}.{k}", F32, ("b", kv_heads, "t", head_dim)))
    return ins, outs


def test_llama_style_config_with_grouped_kv_heads() -> None:
    config = {
        "model_type": "llama",
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_size": 256,
        "max_position_embeddings": 2048,
        "vocab_size": 100,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    spec = text_spec(config, {"eos_token_id": [2, 7]}, *graph_io(3, 2, 32), origin="x")
    assert spec == TextSpec(
        num_layers=3,
        num_heads=8,
        head_dim=32,
        vocab_size=100,
        context_length=2048,
        eos_token_id=2,
        bos_token_id=1,
        num_kv_heads=2,
    )


def test_gpt2_config_and_graph_shapes() -> None:
    config = {
        "model_type": "gpt2",
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 64,
        "n_positions": 128,
        "vocab_size": 100,
        "eos_token_id": 0,
    }
    spec = text_spec(config, {}, *graph_io(2, 4, 16), origin="x")
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.context_length) == (2, 4, 16, 128)


def test_layer_count_mismatch_is_a_layout_error() -> None:
    config = {"n_layer": 4, "n_head": 4, "n_embd": 64, "n_positions": 128, "vocab_size": 100}
    with pytest.raises(LayoutError, match="config says 4 layers, graph has 2 past inputs"):
        text_spec(config, {}, *graph_io(2, 4, 16), origin="x")


def test_graph_without_cache_is_refused() -> None:
    ins, outs = graph_io(0, 4, 16)
    with pytest.raises(LayoutError, match="no past_key_values"):
        text_spec({"n_layer": 2}, {}, ins, outs, origin="x")


def test_missing_context_length_is_named() -> None:
    config = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 100}
    with pytest.raises(ModelLoadError, match="context length"):
        text_spec(config, {}, *graph_io(2, 4, 16), origin="x")


def test_generation_config_do_sample() -> None:
    assert generation_defaults({}).temperature == 0.0
    d = generation_defaults({"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "max_new_tokens": 64})
    assert (d.temperature, d.top_k, d.top_p, d.max_tokens) == (0.7, 20, 0.9, 64)


def test_generation_config_out_of_range_is_named() -> None:
    with pytest.raises(ModelLoadError, match=r"top_p"):
        generation_defaults({"do_sample": True, "top_p": 0})


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_optimum_folder_loads_without_manifest(tiny_dir: Path) -> None:
    gen = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    assert gen.info.origin == "optimum" and gen.spec.num_layers == 2 and gen.eos_ids == {0}


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="neither a fleetgen model folder"):
        load_model(tmp_path)


def test_missing_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_folder(tiny_dir, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"tokenizer .*tokenizer.json does not exist"):
        load_model(d, ONE_THREAD)


def test_corrupt_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_folder(tiny_dir, tmp_path / "m")
    (d / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        load_model(d, ONE_THREAD)


def test_tokenizer_larger_than_the_models_vocab(tiny_dir: Path, tmp_path: Path) -> None:
    from models.gpt2_onnx import build_tokenizer

    d = copy_folder(tiny_dir, tmp_path / "m")
    build_tokenizer(2048).save(str(d / "tokenizer.json"))  # type: ignore[attr-defined]
    with pytest.raises(ModelLoadError, match=r"tokenizer has \d+ tokens, the model's vocab is 512"):
        load_model(d, ONE_THREAD)


def test_corrupt_model_file(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_folder(tiny_dir, tmp_path / "m")
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match=r"cannot load .*model.onnx"):
        load_model(d, ONE_THREAD)


def test_graph_not_matching_layout(tiny_dir: Path, tmp_path: Path) -> None:
    d = copy_folder(tiny_dir, tmp_path / "m")
    model = onnx.load(str(d / "model.onnx"))
    for node in model.graph.node:
        node.input[:] = ["tokens" if n == "input_ids" else n for n in node.input]
    model.graph.input[0].name = "tokens"
    onnx.save(model, str(d / "model.onnx"))
    with pytest.raises(LayoutError, match="graph lacks input_ids"):
        load_model(d, ONE_THREAD)


def _manifest_folder(tiny_dir: Path, d: Path, **changes: object) -> Path:
    copy_folder(tiny_dir, d)
    files = ["model.onnx", "tokenizer.json"]
    fields: dict[str, object] = dict(
        name="tiny",
        version="1",
        task="text-generation",
        engine="onnxruntime",
        model="model.onnx",
        files=file_entries(d, files),
        tokenizer="tokenizer.json",
        text=TextSpec(num_layers=2, num_heads=4, head_dim=16, vocab_size=512, context_length=128, eos_token_id=0),
    )
    fields.update(changes)
    write_manifest(d, ModelManifest(**fields))  # type: ignore[arg-type]
    return d


def test_manifest_declaring_wrong_shape(tiny_dir: Path, tmp_path: Path) -> None:
    spec = TextSpec(num_layers=2, num_heads=8, head_dim=8, vocab_size=512, context_length=128)
    d = _manifest_folder(tiny_dir, tmp_path / "m", text=spec)
    with pytest.raises(LayoutError, match="has 4 kv heads, declared 8"):
        load_model(d, ONE_THREAD)


def test_manifest_file_truncated(tiny_dir: Path, tmp_path: Path) -> None:
    d = _manifest_folder(tiny_dir, tmp_path / "m")
    with open(d / "model.onnx", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelLoadError, match=r"model\.onnx is 1000 bytes, manifest says"):
        load_model(d, ONE_THREAD)


def test_unknown_engine(tiny_dir: Path, tmp_path: Path) -> None:
    d = _manifest_folder(tiny_dir, tmp_path / "m")
    doc = json.loads((d / "manifest.json").read_text())
    doc["engine"] = "tensorflow"
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(FleetgenError, match=r"'tensorflow' - at `\$.engine`") as e:
        load_model(d, ONE_THREAD)
    assert e.value.exit_code == 2


def test_unknown_engine_plugin() -> None:
    from agent.runtime.engine import open_engine

    with pytest.raises(UnknownEngineError, match="unknown engine 'tvm'"):
        open_engine("tvm", Path("x"), EngineOptions())


def test_manifest_folder_generates(tiny_dir: Path, tmp_path: Path) -> None:
    gen = load_model(_manifest_folder(tiny_dir, tmp_path / "m"), ONE_THREAD)
    assert isinstance(gen, TextGenerator) and gen.info.origin == "manifest"
    assert gen.generate(gen.request("abc", max_tokens=4, greedy=True)).timings.generated_tokens == 4


def test_optimum_folder_with_external_data(tiny_dir: Path, tmp_path: Path) -> None:
    from models.quantize import externalize

    d = tmp_path / "ext"
    d.mkdir()
    for f in tiny_dir.iterdir():
        if f.name != "model.onnx":
            shutil.copy2(f, d / f.name)
    externalize(tiny_dir / "model.onnx", d / "model.onnx", external=True)
    assert (d / "model.onnx.data").is_file()
    gen = load_model(d, ONE_THREAD)
    ref = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator) and isinstance(ref, TextGenerator)
    req = gen.request("abc", max_tokens=8, greedy=True, ignore_eos=True)
    assert gen.generate(req).token_ids == ref.generate(req).token_ids


def test_old_merged_optimum_layout_is_named(tmp_path: Path) -> None:
    (tmp_path / "decoder_model_merged.onnx").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"decoder_model_merged\.onnx is the older Optimum layout"):
        load_model(tmp_path)


def test_text_model_on_tflite_is_refused(tiny_dir: Path, image_dirs: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy2(image_dirs["tflite"] / "generator.tflite", d / "model.tflite")
    shutil.copy2(tiny_dir / "tokenizer.json", d / "tokenizer.json")
    write_manifest(
        d,
        ModelManifest(
            name="t",
            version="1",
            task="text-generation",
            engine="tflite",
            model="model.tflite",
            files=file_entries(d, ["model.tflite", "tokenizer.json"]),
            tokenizer="tokenizer.json",
            text=TextSpec(num_layers=2, num_heads=4, head_dim=16, vocab_size=512, context_length=128),
        ),
    )
    with pytest.raises(ModelLoadError, match="text generation needs engine onnxruntime, manifest says tflite"):
        load_model(d, ONE_THREAD)
