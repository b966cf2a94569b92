"""Fused graphs (GroupQueryAttention, past and present one buffer), as onnxruntime-genai's builder
emits them: a tiny Llama-shaped one built with onnx.helper (models/llama_gqa_onnx.py), run
through the runtime and checked token for token against a numpy recomputation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import EngineOptions, TextGenerator, load_model
from agent.runtime.decoder import KVDecoder
from agent.runtime.errors import LayoutError, ModelLoadError
from agent.runtime.gqa import SharedKVDecoder
from agent.runtime.loader import open_folder
from models import llama_gqa_onnx as tiny_llama

ONE_THREAD = EngineOptions(threads=1, spin=False)
PROMPT = "def main(argv): return parser.parse_args"


@pytest.fixture(scope="session")
def gqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama.write_genai_folder(tmp_path_factory.mktemp("tiny-llama") / "genai", tiny_llama.TINY, seed=0)


@pytest.fixture(scope="session")
def weights() -> tiny_llama.Weights:
    return tiny_llama.random_weights(tiny_llama.TINY, seed=0)


@pytest.fixture(scope="session")
def gqa(gqa_dir: Path) -> Iterator[TextGenerator]:
    gen = load_model(gqa_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    yield gen
    gen.close()


def greedy(gen: TextGenerator, prompt: str, n: int, **kw: object) -> tuple[int, ...]:
    req = gen.request(prompt, max_tokens=n, greedy=True, repetition_penalty=1.0, ignore_eos=True, **kw)
    return gen.generate(req).token_ids


def test_builder_folder_loads_with_the_shared_buffer_decoder(gqa: TextGenerator) -> None:
    assert isinstance(gqa.decoder, SharedKVDecoder)
    assert gqa.info.origin == "genai" and gqa.info.kv_cache == "shared"
    s = gqa.spec
    assert (s.num_layers, s.num_heads, s.num_kv_heads, s.head_dim, s.context_length) == (2, 4, 2, 16, 128)
    assert s.eos_token_id == 0
    # genai's search section: do_sample false -> greedy defaults, repetition penalty 1.0
    assert gqa.defaults.temperature == 0.0 and gqa.defaults.repetition_penalty == 1.0


def test_greedy_equals_numpy_recomputation(gqa: TextGenerator, weights: tiny_llama.Weights) -> None:
    ids = gqa.encode_prompt(PROMPT)
    got = greedy(gqa, PROMPT, 40)
    want = tiny_llama.reference_greedy(weights, ids, 40)
    assert len(set(want)) > 5, "the reference repeats itself: the check would mean little"
    assert list(got) == want


def test_cache_is_written_in_place_and_bound_once(gqa_dir: Path, weights: tiny_llama.Weights) -> None:
    gen = load_model(gqa_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator) and isinstance(gen.decoder, SharedKVDecoder)
    dec = gen.decoder
    ids = gen.encode_prompt(PROMPT)
    dec.reset(64)
    binds, key0 = dec.kv_binds, dec.buffers[0]
    dec.forward(ids)
    dec.forward([7])
    # layer 0's keys, recomputed: RMSNorm -> K projection -> rotary, for the prompt and the step
    seq = [*ids, 7]
    s = weights.shape
    h = tiny_llama._rms(weights.embed[np.asarray(seq)].astype(np.float64), weights.layers[0]["ln1"])
    k = (h @ weights.layers[0]["k"]).reshape(len(seq), s.n_kv_head, s.head_dim).transpose(1, 0, 2)
    cos, sin = (c[: len(seq)] for c in tiny_llama.rotary_caches(s))
    want = tiny_llama._rotate(k, cos, sin)
    np.testing.assert_allclose(key0[0, :, : len(seq), :], want, rtol=1e-4, atol=1e-4)
    # more requests that fit: the same buffers, no new binding
    for _ in range(3):
        greedy(gen, PROMPT, 8)
    assert dec.kv_binds == binds and dec.buffers[0] is key0
    gen.close()


def test_concat_cache_on_the_same_graph_gives_the_same_tokens(gqa_dir: Path, gqa: TextGenerator) -> None:
    info, engine = open_folder(gqa_dir, ONE_THREAD)
    gen = TextGenerator(dataclasses.replace(info, kv_cache="concat"), engine)
    assert type(gen.decoder) is KVDecoder
    assert greedy(gen, PROMPT, 24) == greedy(gqa, PROMPT, 24)
    gen.close()


def test_streaming_stop_strings_and_seeded_sampling(gqa: TextGenerator) -> None:
    req = gqa.request(PROMPT, max_tokens=30, temperature=0.9, top_k=20, seed=11)
    chunks: list[str] = []
    first = gqa.generate(req, on_text=chunks.append)
    assert "".join(chunks) == first.text
    assert gqa.generate(req).token_ids == first.token_ids
    full = gqa.generate(gqa.request(PROMPT, max_tokens=30, greedy=True, ignore_eos=True))
    stop = next((full.text[i : i + 2] for i in range(4, len(full.text) - 2) if full.text[i : i + 2].strip()), None)
    assert stop is not None
    cut = gqa.generate(gqa.request(PROMPT, max_tokens=30, greedy=True, ignore_eos=True, stop=[stop]))
    assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)


def test_context_end_and_reuse_after_it(gqa: TextGenerator) -> None:
    long_prompt = PROMPT * 6
    n = len(gqa.encode_prompt(long_prompt))
    assert n < gqa.spec.context_length
    res = gqa.generate(gqa.request(long_prompt, max_tokens=500, greedy=True, ignore_eos=True))
    assert res.finish_reason == "context" and len(res.token_ids) == gqa.spec.context_length - n
    # a short request after a full-context one: the stale tail of the buffer must not leak in
    assert greedy(gqa, PROMPT, 12) == greedy(gqa, PROMPT, 12)


# ---------------------------------------------------------------- refusals


def _copy_with_config(src: Path, dst: Path, edit: dict[str, object]) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "genai_config.json").read_text())
    for dotted, value in edit.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (dst / "genai_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        ({"model.encoder": {"filename": "encoder.onnx"}}, ModelLoadError, ["encoder", "decoder-only", "llama"]),
        ({"model.decoder.inputs": {"past_key_names": "past_key_%d"}}, LayoutError, ["past_key_%d",
                                                                                     "past_key_values.%d.key"]),
        ({"model.decoder.filename": "missing.onnx"}, ModelLoadError, ["missing.onnx"]),
        ({"model.context_length": 0}, ModelLoadError, ["context_length"]),
        ({"model.decoder.pipeline": [{"a": {}}, {"b": {}}]}, ModelLoadError, ["pipeline"]),
        ({"model.decoder.num_key_value_heads": 3}, LayoutError, ["kv heads"]),
    ],
)
def test_refusals_name_the_problem(
    gqa_dir: Path, tmp_path: Path, edit: dict[str, object], error: type[Exception], words: list[str]
) -> None:
    folder = _copy_with_config(gqa_dir, tmp_path / "bad", edit)
    with pytest.raises(error) as info:
        load_model(folder, ONE_THREAD)
    for w in words:
        assert w in str(info.value)


def test_unknown_custom_op_is_refused_naming_it(gqa_dir: Path, tmp_path: Path) -> None:
    import onnx

    folder = tmp_path / "custom"
    shutil.copytree(gqa_dir, folder)
    model = onnx.load(str(folder / "model.onnx"))
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            node.op_type = "PagedAttentionX"
            break
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ModelLoadError) as info:
        load_model(folder, ONE_THREAD)
    assert "PagedAttentionX" in str(info.value)


def test_health_probe_perplexity_through_the_shared_buffer(gqa: TextGenerator, weights: tiny_llama.Weights) -> None:
    from agent.update.health import probe_perplexity

    text = "import json\nprint(json.dumps({'a': 1}))"
    ids = gqa.tokenizer.encode(text)
    logits = tiny_llama.reference_logits(weights, ids)[:-1]
    top = logits.max(axis=-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    want = float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))
    assert probe_perplexity(gqa, text) == pytest.approx(want, rel=1e-3)


def test_fused_graph_equals_the_optimum_layout_of_the_same_weights(
    gqa: TextGenerator, gqa_dir: Path, weights: tiny_llama.Weights, tmp_path: Path
) -> None:
    # the unfused Optimum-style graph (RMSNorm, rotary, concatenated past spelled out) of the
    # same weights, through the fallback decoder: the two paths agree token for token
    folder = tiny_llama.write_optimum_folder(tmp_path / "optimum", weights, gqa_dir / "tokenizer.json")
    ref = load_model(folder, ONE_THREAD)
    assert isinstance(ref, TextGenerator) and type(ref.decoder) is KVDecoder and ref.info.origin == "optimum"
    assert greedy(ref, PROMPT, 32) == greedy(gqa, PROMPT, 32)
    ref.close()


def test_a_config_claiming_a_shared_buffer_for_an_unfused_graph_is_refused_at_load(
    gqa_dir: Path, weights: tiny_llama.Weights, tmp_path: Path
) -> None:
    # an Optimum-layout graph (present = past + new) behind a genai_config.json that says past
    # and present share one buffer: the first run cannot write `present` into the bound buffer
    folder = tiny_llama.write_optimum_folder(tmp_path / "liar", weights, gqa_dir / "tokenizer.json")
    shutil.copy2(gqa_dir / "genai_config.json", folder / "genai_config.json")
    with pytest.raises(ModelLoadError, match="warm-up run failed"):
        load_model(folder, ONE_THREAD)
