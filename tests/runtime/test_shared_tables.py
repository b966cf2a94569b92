"""A tied embedding / LM head held once (ADR 0103): the import's rewrites of builder graphs
(models/shared_tables.py) and the runtime's mapped inputs (agent/runtime/mapped.py), on tiny
Llama-shaped builder folders with tied weights (models/llama_gqa_onnx.py, tied="fp32"|"int8")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.manifest import load_manifest, verify_files
from agent.runtime import TextGenerator, load_model
from agent.runtime.errors import ModelLoadError
from agent.runtime.mapped import METADATA_PREFIX
from controller.cli import main as controller_main
from models import llama_gqa_onnx as tiny_llama
from models import shared_tables
from tests.runtime.conftest import ONE_THREAD

PROMPT = "def f(x): return"


@pytest.fixture(scope="module")
def tied_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama.write_genai_folder(tmp_path_factory.mktemp("t") / "fp32", tiny_llama.TINY, seed=3, tied="fp32")


@pytest.fixture(scope="module")
def tied_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama.write_genai_folder(tmp_path_factory.mktemp("t") / "int8", tiny_llama.TINY, seed=3, tied="int8")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _greedy(gen: TextGenerator, n: int = 24) -> tuple[int, ...]:
    req = gen.request(PROMPT, max_tokens=n, greedy=True, repetition_penalty=1.0, ignore_eos=True)
    return gen.generate(req).token_ids


def _first_logits(folder: Path) -> np.ndarray:
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    ids = gen.encode_prompt(PROMPT)
    gen.decoder.reset(len(ids))
    logits = gen.decoder.forward(ids).copy()
    gen.close()
    return logits


def _initializers(folder: Path) -> dict[str, list[int]]:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return {t.name: list(t.dims) for t in model.graph.initializer}


def test_fp32_tied_head_becomes_a_mapped_input_and_the_text_is_unchanged(tied_fp32: Path, tmp_path: Path) -> None:
    folder = _copy(tied_fp32, tmp_path / "m")
    done = shared_tables.rewrite(folder / "model.onnx")
    assert [d.kind for d in done] == ["mapped-lm-head"]
    assert "lm_head" not in _initializers(folder)  # ORT no longer loads (and copies) it
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    table = gen.engine.mapped["lm_head"]
    assert isinstance(table, np.memmap) and not table.flags.writeable
    assert Path(table.filename) == (folder / "model.onnx.data").resolve()
    assert "lm_head" not in {t.name for t in gen.engine.inputs}  # callers never feed it
    weights = tiny_llama.tie(tiny_llama.random_weights(tiny_llama.TINY, seed=3))
    want = tiny_llama.reference_greedy(weights, gen.encode_prompt(PROMPT), 24)
    assert len(set(want)) > 5
    assert list(_greedy(gen)) == want
    # the generic run path (no IO binding) feeds the mapped table too
    ids = np.asarray([gen.encode_prompt(PROMPT)], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for t in gen.engine.inputs:
        if t.name.startswith("past_key_values."):
            feeds[t.name] = np.zeros((1, tiny_llama.TINY.n_kv_head, 0, tiny_llama.TINY.head_dim), np.float32)
    logits = gen.engine.run(feeds)["logits"][0, -1]
    np.testing.assert_allclose(logits, _first_logits(tied_fp32), rtol=1e-5, atol=1e-5)
    gen.close()


def test_int8_float_table_is_replaced_by_the_int8_head(tied_int8: Path, tmp_path: Path) -> None:
    folder = _copy(tied_int8, tmp_path / "m")
    before = (folder / "model.onnx.data").stat().st_size
    done = shared_tables.rewrite(folder / "model.onnx")
    assert [d.kind for d in done] == ["int8-shared-embedding"]
    inits = _initializers(folder)
    assert "embed" not in inits and "lm_head_Q8" in inits
    s = tiny_llama.TINY
    assert before - (folder / "model.onnx.data").stat().st_size >= s.vocab_size * s.hidden * 4
    assert oct((folder / "model.onnx.data").stat().st_mode & 0o777) == "0o644"
    got, ref = _first_logits(folder), _first_logits(tied_int8)
    # the embedding is now the head's dequantized int8 weights: close to the float table, not equal
    assert 0 < float(np.max(np.abs(got - ref))) < 0.05 * float(np.max(np.abs(ref)))
    # and exactly what GatherBlockQuantized should give: the graph with the table set to them
    q, scales = tiny_llama.quantize_head_int8(np.ascontiguousarray(
        tiny_llama.tie(tiny_llama.random_weights(s, seed=3)).lm_head))
    model = onnx.load(str(tied_int8 / "model.onnx"))
    table = next(t for t in model.graph.initializer if t.name == "embed")
    table.CopyFrom(onnx.numpy_helper.from_array(tiny_llama.dequantize_head_int8(q, scales), "embed"))
    same = _copy(tied_int8, tmp_path / "dequantized")
    onnx.save(model, str(same / "model.onnx"))
    (same / "model.onnx.data").unlink()
    np.testing.assert_allclose(got, _first_logits(same), rtol=1e-5, atol=1e-5)


def test_int8_untied_table_is_kept(tied_int8: Path, tmp_path: Path) -> None:
    folder = _copy(tied_int8, tmp_path / "m")
    model = onnx.load(str(folder / "model.onnx"))
    table = next(t for t in model.graph.initializer if t.name == "embed")
    other = np.random.default_rng(9).standard_normal(tuple(table.dims)).astype(np.float32)
    table.CopyFrom(onnx.numpy_helper.from_array(other, "embed"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    assert shared_tables.rewrite(folder / "model.onnx") == []
    assert "embed" in _initializers(folder)


def test_untied_builder_graph_is_left_alone(tmp_path: Path) -> None:
    folder = tiny_llama.write_genai_folder(tmp_path / "untied", tiny_llama.TINY, seed=0)
    blob = (folder / "model.onnx").read_bytes()
    assert shared_tables.rewrite(folder / "model.onnx") == []
    assert (folder / "model.onnx").read_bytes() == blob


def test_import_records_the_shared_table_in_the_manifest(tied_fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    assert controller_main(["model", "import", str(tied_fp32), "-o", str(out), "--name", "tied"]) == 0
    manifest = load_manifest(out)
    verify_files(out, manifest)
    assert manifest.graph is not None and len(manifest.graph.tables) == 1
    assert "read in place" in manifest.graph.tables[0]
    gen = load_model(out, ONE_THREAD)
    assert isinstance(gen, TextGenerator) and "lm_head" in gen.engine.mapped
    gen.close()
    # the source folder was copied, not rewritten
    assert "lm_head" in _initializers(tied_fp32)


def _set_metadata(folder: Path, value: object) -> None:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    entry = next(p for p in model.metadata_props if p.key == METADATA_PREFIX + "lm_head")
    entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(model, str(folder / "model.onnx"))


@pytest.fixture()
def rewritten(tied_fp32: Path, tmp_path: Path) -> Path:
    folder = _copy(tied_fp32, tmp_path / "m")
    shared_tables.rewrite(folder / "model.onnx")
    return folder


def _entry(folder: Path) -> dict[str, object]:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    return dict(json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_PREFIX + "lm_head")))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"file": "../model.onnx.data"}, "plain file name"),
        ({"file": "missing.data"}, "missing.data is missing"),
        ({"offset": 10**9}, "beyond the end"),
        ({"offset": -1}, "non-negative"),
        ({"dtype": "float64"}, "dtype must be"),
        ({"shape": [64, 999]}, "the graph takes"),
        ({"shape": "64x512"}, "shape must be"),
    ],
)
def test_bad_mapped_input_metadata_is_refused_naming_the_field(
    rewritten: Path, change: dict[str, object], says: str
) -> None:
    _set_metadata(rewritten, {**_entry(rewritten), **change})
    with pytest.raises(ModelLoadError, match=says):
        load_model(rewritten, ONE_THREAD)


def test_mapped_input_metadata_that_is_not_json_is_refused(rewritten: Path) -> None:
    _set_metadata(rewritten, "{not json")
    with pytest.raises(ModelLoadError, match="'lm_head': metadata is not JSON"):
        load_model(rewritten, ONE_THREAD)


def test_mapped_input_the_graph_does_not_take_is_refused(rewritten: Path) -> None:
    model = onnx.load(str(rewritten / "model.onnx"), load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_PREFIX + "no_such_input", json.dumps(_entry(rewritten))
    onnx.save(model, str(rewritten / "model.onnx"))
    with pytest.raises(ModelLoadError, match="'no_such_input' is not an input of the graph"):
        load_model(rewritten, ONE_THREAD)
