"""The committed text models: tokenizer round trips, ONNX Runtime loads each variant in the
Optimum decoder layout, the KV-cache path equals recomputation, quality holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from agent.manifest import load_manifest
from tests.models.conftest import MODELS

# Two paragraphs from the end of Northanger Abbey: held out of training (public domain).
HELDOUT = [
    (
        'The young people could not be surprised at a decision like this. They felt and they '
        'deplored--but they could not resent it; and they parted, endeavouring to hope that '
        'such a change in the general, as each believed almost impossible, might speedily '
        'take place, to unite them again in the fullness of privileged affection. Henry '
        'returned to what was now his only home, to watch over his young plantations, and '
        'extend his improvements for her sake, to whose share in them he looked anxiously '
        'forward; and Catherine remained at Fullerton to cry. Whether the torments of absence'
        ' were softened by a clandestine correspondence, let us not inquire. Mr. and Mrs. '
        'Morland never did--they had been too kind to exact any promise; and whenever '
        'Catherine received a letter, as, at that time, happened pretty often, they always '
        'looked another way.'
    ),
    (
        'The anxiety, which in this state of their attachment must be the portion of Henry '
        'and Catherine, and of all who loved either, as to its final event, can hardly '
        'extend, I fear, to the bosom of my readers, who will see in the tell-tale '
        'compression of the pages before them, that we are all hastening together to perfect '
        'felicity. The means by which their early marriage was effected can be the only '
        "doubt: what probable circumstance could work upon a temper like the general's? The "
        'circumstance which chiefly availed was the marriage of his daughter with a man of '
        'fortune and consequence, which took place in the course of the summer--an accession '
        'of dignity that threw him into a fit of good humour, from which he did not recover '
        'till after Eleanor had obtained his forgiveness of Henry, and his permission for him'
        ' "to be a fool if he liked it!"'
    ),
]
ROUND_TRIP = [
    "Tell me a story about summer",
    "It is a truth universally acknowledged, that a single man...",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "café, naïve, Ελληνικά, 日本語, emoji 🙂👍🏽",
    "",
]
FP32 = MODELS / "text" / "austen-3m"


def _session(folder: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def _step(sess: ort.InferenceSession, ids: list[int], past: dict[str, np.ndarray], start: int):
    feeds = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, start + len(ids)), dtype=np.int64),
        "position_ids": np.arange(start, start + len(ids), dtype=np.int64)[None, :],
        **past,
    }
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, feeds), strict=True))
    present = {
        k.replace("present.", "past_key_values."): v for k, v in out.items() if k != "logits"
    }
    return out["logits"], present


def _empty(folder: Path) -> dict[str, np.ndarray]:
    spec = load_manifest(folder).text
    assert spec is not None
    shape = (1, spec.num_heads, 0, spec.head_dim)
    return {
        f"past_key_values.{i}.{kv}": np.zeros(shape, np.float32)
        for i in range(spec.num_layers)
        for kv in ("key", "value")
    }


def _greedy(folder: Path, sess: ort.InferenceSession, prompt: list[int], n: int, cached: bool):
    seq, out = list(prompt), []
    logits, past = _step(sess, seq, _empty(folder), 0)
    for _ in range(n):
        out.append(int(logits[0, -1].argmax()))
        if cached:
            logits, past = _step(sess, [out[-1]], past, len(seq))
            seq.append(out[-1])
        else:
            seq.append(out[-1])
            logits, _ = _step(sess, seq, _empty(folder), 0)
    return out


def _perplexity(folder: Path, sess: ort.InferenceSession, tok: Tokenizer) -> float:
    nll, count = 0.0, 0
    for text in HELDOUT:
        ids = [*tok.encode(text).ids, tok.token_to_id("<|endoftext|>")][:257]
        logits, _ = _step(sess, ids[:-1], _empty(folder), 0)
        z = logits[0].astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        nll -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(nll / count)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_tokenizer_round_trips(text_dir: Path, text: str) -> None:
    tok = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    assert tok.decode(tok.encode(text).ids) == text


def test_tokenizer_has_the_declared_eos(text_dir: Path) -> None:
    tok = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    spec = load_manifest(text_dir).text
    assert spec is not None
    assert tok.token_to_id("<|endoftext|>") == spec.eos_token_id
    assert tok.get_vocab_size() == spec.vocab_size
    generation = json.loads((text_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == spec.eos_token_id


def test_graph_has_the_optimum_decoder_layout(text_dir: Path) -> None:
    spec = load_manifest(text_dir).text
    assert spec is not None
    sess = _session(text_dir)
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    past = [f"past_key_values.{i}.{kv}" for i in range(spec.num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(spec.num_layers) for kv in ("key", "value")]
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past]
    assert list(outputs) == ["logits", *present]
    for name in ("input_ids", "attention_mask", "position_ids"):
        assert inputs[name].type == "tensor(int64)"
        assert all(isinstance(d, str) for d in inputs[name].shape), "batch and length are dynamic"
    for name in past:
        batch, heads, length, head_dim = inputs[name].shape
        assert (heads, head_dim) == (spec.num_heads, spec.head_dim)
        assert isinstance(batch, str) and isinstance(length, str)
    assert outputs["logits"].shape[2] == spec.vocab_size


def test_fp32_kv_cache_equals_recomputation() -> None:
    sess = _session(FP32)
    tok = Tokenizer.from_file(str(FP32 / "tokenizer.json"))
    prompt = tok.encode("Tell me a story about summer").ids
    assert _greedy(FP32, sess, prompt, 24, cached=True) == _greedy(
        FP32, sess, prompt, 24, cached=False
    )


def test_batch_with_left_padding_matches_single_rows() -> None:
    sess = _session(FP32)
    tok = Tokenizer.from_file(str(FP32 / "tokenizer.json"))
    a, b = tok.encode("It was a fine summer morning").ids, tok.encode("Emma").ids
    pad = len(a) - len(b)
    feeds = {
        "input_ids": np.array([a, [0] * pad + b], dtype=np.int64),
        "attention_mask": np.array([[1] * len(a), [0] * pad + [1] * len(b)], dtype=np.int64),
        "position_ids": np.array([range(len(a)), [0] * pad + list(range(len(b)))], np.int64),
        **{k: np.concatenate([v, v]) for k, v in _empty(FP32).items()},
    }
    batched = sess.run(["logits"], feeds)[0]
    single_a, _ = _step(sess, a, _empty(FP32), 0)
    single_b, _ = _step(sess, b, _empty(FP32), 0)
    np.testing.assert_allclose(batched[0, -1], single_a[0, -1], atol=1e-4)
    np.testing.assert_allclose(batched[1, -1], single_b[0, -1], atol=1e-4)


def test_each_variant_generates_text(text_dir: Path) -> None:
    sess = _session(text_dir)
    tok = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    prompt = tok.encode("Tell me a story about summer").ids
    out = _greedy(text_dir, sess, prompt, 12, cached=True)
    text = tok.decode(out)
    assert sum(c.isalpha() for c in text) > 10, text


def test_held_out_perplexity_is_close_to_the_model_card(text_dir: Path) -> None:
    """Quantized variants stay within 15% of fp32 on text the model never saw."""
    tok = Tokenizer.from_file(str(text_dir / "tokenizer.json"))
    ppl = _perplexity(text_dir, _session(text_dir), tok)
    fp32 = _perplexity(FP32, _session(FP32), tok)
    assert ppl < 150, f"{text_dir.name}: held-out perplexity {ppl:.1f}"
    assert ppl <= fp32 * 1.15, f"{text_dir.name}: {ppl:.1f} vs fp32 {fp32:.1f}"
