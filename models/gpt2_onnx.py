"""A torch-free GPT-2-shaped decoder in the Hugging Face / Optimum ONNX layout.

Built with onnx.helper and numpy random weights, for tests (tiny) and benchmarks
(GPT-2-small shape, built on demand into a cache folder, never committed). The folder
it writes looks like what `optimum-cli export onnx --task text-generation-with-past`
writes for gpt2: `model.onnx`, `config.json`, `generation_config.json`,
`tokenizer.json` (a byte-level BPE trained here in a second on Python's own sources).

Graph (opset 17), one graph for prefill and decode:
    in:  input_ids, attention_mask, position_ids          int64 [batch, seq|past+seq]
         past_key_values.N.key|value                       float [batch, heads, past, head_dim]
    out: logits                                            float [batch, seq, vocab]
         present.N.key|value                               float [batch, heads, past+seq, head_dim]
The LM head is an untied copy of the token embedding (transposed), so that both the
int8 and the 4-bit quantizers quantize it (they skip a shared Gather initializer).

    python -m models.gpt2_onnx tiny OUT_DIR
    python -m models.gpt2_onnx small OUT_DIR
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class GPT2Shape:
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int
    # fewer KV heads than query heads = grouped-query attention (Llama-style); None = MHA
    n_kv_head: int | None = None

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_params(self) -> int:
        e, v = self.n_embd, self.vocab_size
        per_layer = 12 * e * e + 13 * e
        return self.n_layer * per_layer + 2 * v * e + self.n_positions * e + 2 * e


TINY = GPT2Shape(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128)
SMALL = GPT2Shape(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
TINY_GQA = GPT2Shape(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128, n_kv_head=2)
SHAPES = {"tiny": TINY, "small": SMALL, "tiny-gqa": TINY_GQA}


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, rng: np.random.Generator, scale: float = 1.0) -> None:
        self.scale = scale
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = rng
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_node", **attrs))
        return out

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, hint: str, shape: tuple[int, ...], std: float = 0.02) -> str:
        value = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std * self.scale)
        return self.const(hint, value)


def _layer_norm(g: _Graph, x: str, width: int, hint: str) -> str:
    scale = g.const(hint + "_g", np.ones(width, np.float32))
    bias = g.const(hint + "_b", np.zeros(width, np.float32))
    return g.op("LayerNormalization", [x, scale, bias], hint, axis=-1, epsilon=1e-5)


def _gelu_tanh(g: _Graph, x: str) -> str:
    # GPT-2's "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Opset 17 has no Gelu.
    cube = g.op("Mul", [x, g.op("Mul", [x, x])])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.const("c044", np.array(0.044715, np.float32))])])
    t = g.op("Tanh", [g.op("Mul", [inner, g.const("csq", np.array(math.sqrt(2 / math.pi), np.float32))])])
    one_plus = g.op("Add", [t, g.const("one", np.array(1.0, np.float32))])
    return g.op("Mul", [g.op("Mul", [x, one_plus]), g.const("half", np.array(0.5, np.float32))])


def _attention_mask(g: _Graph, attention_mask: str, present_len_of: str, seq_len_of: str) -> str:
    """Boolean [batch, 1, seq, total]: causal (key <= absolute query position) AND not padding."""
    i64 = lambda v: g.const("i", np.array(v, np.int64))  # noqa: E731
    total = g.op("Gather", [g.op("Shape", [present_len_of]), i64(2)], "total")
    seq = g.op("Gather", [g.op("Shape", [seq_len_of]), i64(1)], "seq")
    keys = g.op("Range", [i64(0), total, i64(1)], "keys")
    queries = g.op("Range", [g.op("Sub", [total, seq]), total, i64(1)], "queries")
    causal = g.op(
        "LessOrEqual",
        [
            g.op("Unsqueeze", [keys, g.const("ax", np.array([0], np.int64))]),
            g.op("Unsqueeze", [queries, g.const("ax", np.array([1], np.int64))]),
        ],
        "causal",
    )
    pad = g.op("Cast", [attention_mask], "pad", to=TensorProto.BOOL)
    pad = g.op("Unsqueeze", [pad, g.const("ax", np.array([1, 2], np.int64))])
    return g.op("And", [g.op("Unsqueeze", [causal, g.const("ax", np.array([0, 1], np.int64))]), pad], "mask")


def build_graph(shape: GPT2Shape, seed: int = 0, init_scale: float = 1.0) -> onnx.ModelProto:
    """The decoder graph with random weights: GPT-2's init, normal(0, 0.02), times `init_scale`.

    At GPT-2's scale a random model repeats one token forever; tests use a larger scale
    (e.g. 20) so greedy output depends on the context and cache bugs show.
    """
    g = _Graph(np.random.default_rng(seed), init_scale)
    e, h, d, hkv = shape.n_embd, shape.n_head, shape.head_dim, shape.kv_heads
    b, s, p, t = "batch_size", "sequence_length", "past_sequence_length", "past_sequence_length + 1"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, s]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [b, "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [b, s]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [b, s, shape.vocab_size])]
    for i in range(shape.n_layer):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, [b, hkv, p, d])
            )
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, [b, hkv, t, d]))

    wte = g.weight("wte", (shape.vocab_size, e))
    wte_value = numpy_helper.to_array(g.inits[-1])
    wpe = g.weight("wpe", (shape.n_positions, e), std=0.01)
    x = g.op(
        "Add",
        [g.op("Gather", [wte, "input_ids"], "tok"), g.op("Gather", [wpe, "position_ids"], "pos")],
        "embed",
    )
    kv_width = hkv * d
    split = g.const("qkv_split", np.array([e, kv_width, kv_width], np.int64))
    heads_shape = g.const("heads_shape", np.array([0, 0, h, d], np.int64))
    kv_heads_shape = g.const("kv_heads_shape", np.array([0, 0, hkv, d], np.int64))
    groups_shape = g.const("groups_shape", np.array([0, hkv, h // hkv, -1, d], np.int64))
    ungroup_shape = g.const("ungroup_shape", np.array([0, h, -1, d], np.int64))
    axis2 = g.const("axis2", np.array([2], np.int64))
    axis1 = g.const("axis1", np.array([1], np.int64))
    merged_shape = g.const("merged_shape", np.array([0, 0, e], np.int64))
    scale = g.const("scale", np.array(1 / math.sqrt(d), np.float32))
    neg = g.const("neg", np.array(-1e9, np.float32))
    mask = ""
    proj_std = 0.02 / math.sqrt(2 * shape.n_layer)
    for i in range(shape.n_layer):
        a = _layer_norm(g, x, e, f"ln1_{i}")
        qkv = g.op(
            "Add",
            [
                g.op("MatMul", [a, g.weight(f"c_attn_w_{i}", (e, e + 2 * kv_width))]),
                g.const(f"c_attn_b_{i}", np.zeros(e + 2 * kv_width, np.float32)),
            ],
            f"qkv_{i}",
        )
        q, k, v = (g.name(f"{n}_{i}") for n in "qkv")
        g.nodes.append(helper.make_node("Split", [qkv, split], [q, k, v], name=f"split_{i}", axis=2))
        q = g.op("Transpose", [g.op("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])
        k, v = (g.op("Transpose", [g.op("Reshape", [y, kv_heads_shape])], perm=[0, 2, 1, 3]) for y in (k, v))
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        g.nodes.append(
            helper.make_node("Concat", [f"past_key_values.{i}.key", k], [present_k], name=f"cat_k_{i}", axis=2)
        )
        g.nodes.append(
            helper.make_node("Concat", [f"past_key_values.{i}.value", v], [present_v], name=f"cat_v_{i}", axis=2)
        )
        if not mask:
            mask = _attention_mask(g, "attention_mask", present_k, "input_ids")
        if hkv == h:
            scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [present_k], perm=[0, 1, 3, 2])]), scale])
            probs = g.op("Softmax", [g.op("Where", [mask, scores, neg])], axis=-1)
            heads = g.op("MatMul", [probs, present_v])
        else:  # grouped-query attention: [b, hkv, group, s, d] against [b, hkv, 1, t, d]
            q5 = g.op("Reshape", [q, groups_shape])
            k5 = g.op("Transpose", [g.op("Unsqueeze", [present_k, axis2])], perm=[0, 1, 2, 4, 3])
            scores = g.op("Mul", [g.op("MatMul", [q5, k5]), scale])
            mask5 = g.op("Unsqueeze", [mask, axis1])
            probs = g.op("Softmax", [g.op("Where", [mask5, scores, neg])], axis=-1)
            ctx5 = g.op("MatMul", [probs, g.op("Unsqueeze", [present_v, axis2])])
            heads = g.op("Reshape", [ctx5, ungroup_shape])
        ctx = g.op("Reshape", [g.op("Transpose", [heads], perm=[0, 2, 1, 3]), merged_shape])
        attn = g.op(
            "Add",
            [
                g.op("MatMul", [ctx, g.weight(f"c_proj_w_{i}", (e, e), proj_std)]),
                g.const(f"c_proj_b_{i}", np.zeros(e, np.float32)),
            ],
        )
        x = g.op("Add", [x, attn], f"res1_{i}")
        m = _layer_norm(g, x, e, f"ln2_{i}")
        m = g.op(
            "Add",
            [
                g.op("MatMul", [m, g.weight(f"c_fc_w_{i}", (e, 4 * e))]),
                g.const(f"c_fc_b_{i}", np.zeros(4 * e, np.float32)),
            ],
        )
        m = _gelu_tanh(g, m)
        m = g.op(
            "Add",
            [
                g.op("MatMul", [m, g.weight(f"mlp_proj_w_{i}", (4 * e, e), proj_std)]),
                g.const(f"mlp_proj_b_{i}", np.zeros(e, np.float32)),
            ],
        )
        x = g.op("Add", [x, m], f"res2_{i}")
    x = _layer_norm(g, x, e, "ln_f")
    lm_head = g.const("lm_head", np.ascontiguousarray(wte_value.T))
    g.nodes.append(helper.make_node("MatMul", [x, lm_head], ["logits"], name="lm_head_node"))
    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fleetgen.models.gpt2_onnx",
    )
    model.ir_version = 8
    return model


def _corpus() -> list[str]:
    """Python's own sources: present on every machine that runs this, English-ish enough."""
    import argparse as m1
    import json as m4
    import logging as m3
    import textwrap as m2

    return [inspect.getsource(m) for m in (m1, m2, m3, m4)]


def build_tokenizer(vocab_size: int) -> object:
    """A byte-level BPE (as GPT-2's) with `<|endoftext|>` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 2048),
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def write_optimum_folder(out_dir: Path, shape: GPT2Shape = TINY, seed: int = 0, init_scale: float = 1.0) -> Path:
    """Write an Optimum-style decoder folder; returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(shape.vocab_size)
    tok.save(str(out_dir / "tokenizer.json"))  # type: ignore[attr-defined]
    eos = 0
    config: dict[str, object] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": shape.n_layer,
        "n_head": shape.n_head,
        "n_embd": shape.n_embd,
        "n_positions": shape.n_positions,
        "n_ctx": shape.n_positions,
        "vocab_size": shape.vocab_size,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": False,
        "use_cache": True,
    }
    if shape.n_kv_head is not None:
        # grouped KV heads only exist in Llama-style configs: write those keys instead, as
        # Optimum copies them from the model (the graph stays GPT-2-like; the runtime only
        # reads sizes, never the architecture)
        config = {
            "model_type": "llama",
            "num_hidden_layers": shape.n_layer,
            "num_attention_heads": shape.n_head,
            "num_key_value_heads": shape.n_kv_head,
            "hidden_size": shape.n_embd,
            "max_position_embeddings": shape.n_positions,
            "vocab_size": shape.vocab_size,
            "bos_token_id": eos,
            "eos_token_id": eos,
            "tie_word_embeddings": False,
            "use_cache": True,
        }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": eos, "eos_token_id": eos, "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}, indent=2) + "\n"
    )
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": shape.n_positions,
                "tokenizer_class": "GPT2Tokenizer",
                "eos_token": EOS_TOKEN,
                "bos_token": EOS_TOKEN,
            },
            indent=2,
        )
        + "\n"
    )
    onnx.save(build_graph(shape, seed, init_scale), str(out_dir / "model.onnx"))
    return out_dir


def build_cached(shape: GPT2Shape, cache_dir: Path, seed: int = 0, init_scale: float = 1.0) -> Path:
    """Build once into `cache_dir` (reused when its model.onnx exists)."""
    if not (Path(cache_dir) / "model.onnx").is_file():
        write_optimum_folder(Path(cache_dir), shape, seed, init_scale)
    return Path(cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.gpt2_onnx", description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-scale", type=float, default=1.0, help="x GPT-2's init std 0.02")
    args = parser.parse_args(argv)
    out = write_optimum_folder(args.out_dir, SHAPES[args.shape], args.seed, args.init_scale)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
