"""A torch-free Llama-shaped decoder in onnxruntime-genai's fused layout, and its numpy twin.

Built with onnx.helper and seeded numpy weights, for tests (tiny) and benchmarks. The folder
it writes looks like what onnxruntime-genai's model builder writes for a Llama checkpoint
(`python -m onnxruntime_genai.models.builder -e cpu`): `model.onnx`, `genai_config.json`
(`search.past_present_share_buffer: true`), `tokenizer.json`, and no `config.json`.

Graph (opset 17 + com.microsoft 1), one graph for prefill and decode:
    in:  input_ids, attention_mask                 int64 [batch, seq|total]
         past_key_values.N.key|value               float [batch, kv_heads, past, head_dim]
    out: logits                                    float [batch, seq, vocab]
         present.N.key|value                       float [batch, kv_heads, total, head_dim]
Per layer: SimplifiedLayerNormalization (RMSNorm), q/k/v MatMuls, GroupQueryAttention with
rotary inside (`do_rotary=1`, cos/sin caches as initializers), o MatMul, RMSNorm, SiLU-gated
MLP. `seqlens_k` (int32 [batch]) and `total_sequence_length` (int32 scalar) are computed from
the attention mask, as the builder does. When past and present are one buffer (the runtime's
`SharedKVDecoder`), GroupQueryAttention writes the new keys in place.

`reference_greedy` recomputes the same model in numpy (no cache, no ONNX Runtime): what the
tests compare the runtime's tokens with.

    python -m models.llama_gqa_onnx OUT_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
EPS = 1e-5
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class LlamaShape:
    n_layer: int
    n_head: int
    n_kv_head: int
    hidden: int
    intermediate: int
    vocab_size: int
    context: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head


# head_dim 16: GroupQueryAttention's rotary needs a multiple of 16
TINY = LlamaShape(n_layer=2, n_head=4, n_kv_head=2, hidden=64, intermediate=128, vocab_size=512, context=128)
# SmolLM-135M's shape (the bench's)
SMOLLM_135M = LlamaShape(n_layer=30, n_head=9, n_kv_head=3, hidden=576, intermediate=1536, vocab_size=49152,
                         context=2048)


@dataclass(frozen=True)
class Weights:
    shape: LlamaShape
    embed: np.ndarray  # [vocab, hidden]
    layers: list[dict[str, np.ndarray]]  # q k v o [in, out]; gate up down; ln1 ln2 [hidden]
    norm: np.ndarray
    lm_head: np.ndarray  # [hidden, vocab]


def random_weights(shape: LlamaShape, seed: int = 0) -> Weights:
    """Seeded weights scaled so that greedy tokens depend on the context (a random model at
    a small scale repeats one token, and then a cache bug would go unnoticed)."""
    rng = np.random.default_rng(seed)
    e, f = shape.hidden, shape.intermediate
    kv = shape.n_kv_head * shape.head_dim

    def w(*dims: int, std: float) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * np.float32(std)).astype(np.float32)

    layers = []
    for _ in range(shape.n_layer):
        wide, narrow = 2.0 / np.sqrt(e), 1.0 / np.sqrt(e)
        layers.append({
            "q": w(e, e, std=wide), "k": w(e, kv, std=wide), "v": w(e, kv, std=narrow),
            "o": w(e, e, std=narrow), "gate": w(e, f, std=narrow), "up": w(e, f, std=narrow),
            "down": w(f, e, std=1.0 / np.sqrt(f)),
            "ln1": (1 + w(e, std=0.1)).astype(np.float32), "ln2": (1 + w(e, std=0.1)).astype(np.float32),
        })
    return Weights(shape, w(shape.vocab_size, e, std=1.0), layers, (1 + w(e, std=0.1)).astype(np.float32),
                   w(e, shape.vocab_size, std=2.0 / np.sqrt(e)))


def rotary_caches(shape: LlamaShape) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [context, head_dim / 2], as the builder stores them."""
    d = shape.head_dim
    inv_freq = 1.0 / (ROPE_THETA ** (np.arange(0, d, 2, dtype=np.float64) / d))
    angles = np.outer(np.arange(shape.context, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def tie(weights: Weights) -> Weights:
    """Tied word embeddings: the LM head is the embedding, transposed. The embedding is scaled
    to the head's size (at its own, each token's logit for itself wins and greedy repeats it)."""
    embed = (weights.embed * np.float32(0.1)).astype(np.float32)
    return dataclasses.replace(weights, embed=embed, lm_head=np.ascontiguousarray(embed.T))


def quantize_head_int8(lm_head: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The builder's int8 MatMulNBits weights of an LM head [hidden, vocab]: symmetric blocks of
    `block` along hidden, uint8 = round(w / scale) + 128 with scale = absmax / -128 (the positive
    extreme clips at 255, as the builder's quantizer does). Returns (q [vocab, blocks, block], scales)."""
    w = lm_head.T.astype(np.float32)  # [vocab, hidden]
    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    scales = (np.abs(blocks).max(axis=2) / -128.0).astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)[:, :, None]
    q = np.clip(np.rint(blocks / safe) + 128, 0, 255).astype(np.uint8)
    return q, scales


def dequantize_head_int8(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[vocab, hidden] float32 of `quantize_head_int8`'s output."""
    return ((q.astype(np.float32) - 128.0) * scales[:, :, None]).reshape(q.shape[0], -1)


def build_graph(weights: Weights, tied: str = "") -> onnx.ModelProto:
    """`tied`: "" (separate embedding and LM head), "fp32" (the builder's shared_embeddings:
    Transpose(lm_head) -> Gather; pass `tie(weights)`), "int8" (an int8 MatMulNBits LM head
    and a separate float embedding table, as the builder writes a tied checkpoint at int8)."""
    s = weights.shape
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def op(op_type: str, inputs: list[str], out: str, domain: str = "", **attrs: object) -> str:
        nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_node", domain=domain, **attrs))
        return out

    cos, sin = rotary_caches(s)
    init("cos_cache", cos)
    init("sin_cache", sin)
    init("one_i64", np.array([1], np.int64))
    init("axis1", np.array([1], np.int64))
    # seqlens_k = sum(mask) - 1, total_sequence_length = mask's length (both int32)
    op("ReduceSum", ["attention_mask", "axis1"], "mask_sum", keepdims=0)
    op("Sub", ["mask_sum", "one_i64"], "seqlens_k_i64")
    op("Cast", ["seqlens_k_i64"], "seqlens_k", to=TensorProto.INT32)
    op("Shape", ["attention_mask"], "mask_shape")
    op("Gather", ["mask_shape", "one_i64"], "total_len_1")
    init("squeeze_axis", np.array([0], np.int64))
    op("Squeeze", ["total_len_1", "squeeze_axis"], "total_len_i64")
    op("Cast", ["total_len_i64"], "total_sequence_length", to=TensorProto.INT32)

    if tied == "fp32":
        table = op("Transpose", [init("lm_head", weights.lm_head)], "embed_table", perm=[1, 0])
        x = op("Gather", [table, "input_ids"], "embedded")
    else:
        x = op("Gather", [init("embed", weights.embed), "input_ids"], "embedded")
    for i, lw in enumerate(weights.layers):
        p = f"l{i}_"
        h = op("SimplifiedLayerNormalization", [x, init(p + "ln1", lw["ln1"])], p + "norm1", axis=-1, epsilon=EPS)
        q = op("MatMul", [h, init(p + "wq", lw["q"])], p + "q")
        k = op("MatMul", [h, init(p + "wk", lw["k"])], p + "k")
        v = op("MatMul", [h, init(p + "wv", lw["v"])], p + "v")
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k", "total_sequence_length",
             "cos_cache", "sin_cache"],
            [p + "attn", f"present.{i}.key", f"present.{i}.value"],
            name=p + "gqa", domain="com.microsoft", num_heads=s.n_head, kv_num_heads=s.n_kv_head, do_rotary=1,
        ))
        x = op("Add", [x, op("MatMul", [p + "attn", init(p + "wo", lw["o"])], p + "o")], p + "res1")
        h = op("SimplifiedLayerNormalization", [x, init(p + "ln2", lw["ln2"])], p + "norm2", axis=-1, epsilon=EPS)
        gate = op("MatMul", [h, init(p + "wg", lw["gate"])], p + "gate")
        silu = op("Mul", [gate, op("Sigmoid", [gate], p + "sig")], p + "silu")
        up = op("Mul", [silu, op("MatMul", [h, init(p + "wu", lw["up"])], p + "up")], p + "gated")
        x = op("Add", [x, op("MatMul", [up, init(p + "wd", lw["down"])], p + "down")], p + "res2")
    h = op("SimplifiedLayerNormalization", [x, init("final_ln", weights.norm)], "final_norm", axis=-1, epsilon=EPS)
    if tied == "int8":
        q, scales = quantize_head_int8(weights.lm_head)
        op("MatMulNBits", [h, init("lm_head_Q8", q), init("lm_head_scales", scales)], "logits",
           domain="com.microsoft", K=s.hidden, N=s.vocab_size, bits=8, block_size=32, accuracy_level=4)
    else:
        op("MatMul", [h, "lm_head" if tied == "fp32" else init("lm_head", weights.lm_head)], "logits")

    kv_shape = ["batch_size", s.n_kv_head, "past_sequence_length", s.head_dim]
    present = ["batch_size", s.n_kv_head, "total_sequence_length", s.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length",
                                                                           s.vocab_size])]
    for i in range(s.n_layer):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present))
    graph = helper.make_graph(nodes, "llama_gqa", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="fleetgen models.llama_gqa_onnx",
    )
    model.ir_version = 8
    return model


def genai_config(shape: LlamaShape, eos: int = 0, bos: int = 0) -> dict[str, object]:
    """What onnxruntime-genai's builder writes (the keys the runtime reads, and the usual rest)."""
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": shape.context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": shape.n_head,
                "num_hidden_layers": shape.n_layer,
                "num_key_value_heads": shape.n_kv_head,
            },
            "eos_token_id": eos,
            "pad_token_id": eos,
            "type": "llama",
            "vocab_size": shape.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": shape.context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def write_genai_folder(out_dir: Path, shape: LlamaShape = TINY, seed: int = 0, tied: str = "") -> Path:
    """Write a builder-style folder (model.onnx, genai_config.json, tokenizer.json); a `tied`
    one (see build_graph) keeps its weights in model.onnx.data, as the builder does."""
    from models.gpt2_onnx import build_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(shape.vocab_size).save(str(out_dir / "tokenizer.json"))  # type: ignore[attr-defined]
    (out_dir / "genai_config.json").write_text(json.dumps(genai_config(shape), indent=4) + "\n")
    weights = random_weights(shape, seed)
    if tied:
        onnx.save(build_graph(tie(weights), tied), str(out_dir / "model.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save(build_graph(weights), str(out_dir / "model.onnx"))
    return out_dir


# ---------------------------------------------------------------- the same model, unfused


def build_optimum_graph(weights: Weights) -> onnx.ModelProto:
    """The same weights in the Optimum layout, as `optimum-cli export onnx` writes a Llama:
    position_ids input, RMSNorm and rotary spelled out in standard ops, the past concatenated
    with the new keys (present = past + new), grouped heads broadcast against their queries.
    The baseline the fused graph is measured against (tests/bench/peers.py)."""
    from models.gpt2_onnx import _attention_mask, _Graph

    s = weights.shape
    g = _Graph(np.random.default_rng(0))
    e, h, d, hkv = s.hidden, s.n_head, s.head_dim, s.n_kv_head
    b, q_len, p, t = "batch_size", "sequence_length", "past_sequence_length", "past_sequence_length + 1"
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, q_len]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [b, "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [b, q_len]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [b, q_len, s.vocab_size])]
    for i in range(s.n_layer):
        for kind in ("key", "value"):
            past = f"past_key_values.{i}.{kind}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, [b, hkv, p, d]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, [b, hkv, t, d]))
    cos, sin = rotary_caches(s)
    cos_t = g.const("cos_table", np.concatenate([cos, cos], axis=1))
    sin_t = g.const("sin_table", np.concatenate([sin, sin], axis=1))
    axis1, axis2 = g.const("axis1", np.array([1], np.int64)), g.const("axis2", np.array([2], np.int64))
    cos_b = g.op("Unsqueeze", [g.op("Gather", [cos_t, "position_ids"]), axis1], "cos")  # [b, 1, s, d]
    sin_b = g.op("Unsqueeze", [g.op("Gather", [sin_t, "position_ids"]), axis1], "sin")
    half = [g.const(n, np.array([v], np.int64)) for n, v in (("h0", 0), ("h1", d // 2), ("h2", d))]
    axis3 = g.const("axis3", np.array([3], np.int64))
    eps, two = g.const("eps", np.array(EPS, np.float32)), g.const("two", np.array(2.0, np.float32))
    heads_shape = g.const("heads_shape", np.array([0, 0, h, d], np.int64))
    kv_heads_shape = g.const("kv_heads_shape", np.array([0, 0, hkv, d], np.int64))
    groups_shape = g.const("groups_shape", np.array([0, hkv, h // hkv, -1, d], np.int64))
    ungroup_shape = g.const("ungroup_shape", np.array([0, h, -1, d], np.int64))
    merged_shape = g.const("merged_shape", np.array([0, 0, e], np.int64))
    scale = g.const("scale", np.array(1 / np.sqrt(d), np.float32))
    neg = g.const("neg", np.array(-1e9, np.float32))

    def rms(x: str, gain: np.ndarray, hint: str) -> str:
        var = g.op("ReduceMean", [g.op("Pow", [x, two])], hint + "_var", axes=[-1], keepdims=1)
        inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, eps])])])
        return g.op("Mul", [g.op("Mul", [x, inv]), g.const(hint + "_g", gain)], hint)

    def rotate(x: str) -> str:
        x1 = g.op("Slice", [x, half[0], half[1], axis3])
        x2 = g.op("Slice", [x, half[1], half[2], axis3])
        rot = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos_b]), g.op("Mul", [rot, sin_b])])

    x = g.op("Gather", [g.const("embed", weights.embed), "input_ids"], "embedded")
    mask = ""
    for i, lw in enumerate(weights.layers):
        a = rms(x, lw["ln1"], f"ln1_{i}")
        q = g.op("Transpose", [g.op("Reshape", [g.op("MatMul", [a, g.const(f"wq{i}", lw["q"])]), heads_shape])],
                 perm=[0, 2, 1, 3])
        k, v = (g.op("Transpose", [g.op("Reshape", [g.op("MatMul", [a, g.const(f"w{n}{i}", lw[n])]),
                                                    kv_heads_shape])], perm=[0, 2, 1, 3]) for n in ("k", "v"))
        q, k = rotate(q), rotate(k)
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.key", k], [present_k], name=f"ck{i}", axis=2))
        g.nodes.append(helper.make_node("Concat", [f"past_key_values.{i}.value", v], [present_v], name=f"cv{i}",
                                        axis=2))
        if not mask:
            mask = g.op("Unsqueeze", [_attention_mask(g, "attention_mask", present_k, "input_ids"), axis1])
        q5 = g.op("Reshape", [q, groups_shape])
        k5 = g.op("Transpose", [g.op("Unsqueeze", [present_k, axis2])], perm=[0, 1, 2, 4, 3])
        probs = g.op("Softmax", [g.op("Where", [mask, g.op("Mul", [g.op("MatMul", [q5, k5]), scale]), neg])], axis=-1)
        heads = g.op("Reshape", [g.op("MatMul", [probs, g.op("Unsqueeze", [present_v, axis2])]), ungroup_shape])
        ctx = g.op("Reshape", [g.op("Transpose", [heads], perm=[0, 2, 1, 3]), merged_shape])
        x = g.op("Add", [x, g.op("MatMul", [ctx, g.const(f"wo{i}", lw["o"])])], f"res1_{i}")
        m = rms(x, lw["ln2"], f"ln2_{i}")
        gate = g.op("MatMul", [m, g.const(f"wg{i}", lw["gate"])])
        up = g.op("MatMul", [m, g.const(f"wu{i}", lw["up"])])
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        x = g.op("Add", [x, g.op("MatMul", [act, g.const(f"wd{i}", lw["down"])])], f"res2_{i}")
    x = rms(x, weights.norm, "final_norm")
    g.nodes.append(helper.make_node("MatMul", [x, g.const("lm_head", weights.lm_head)], ["logits"], name="lm_head"))
    model = helper.make_model(helper.make_graph(g.nodes, "llama_optimum", inputs, outputs, g.inits),
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fleetgen models.llama_gqa_onnx (Optimum layout)")
    model.ir_version = 8
    return model


def write_optimum_folder(out_dir: Path, weights: Weights, tokenizer_json: Path | None = None) -> Path:
    """The Optimum-layout folder: model.onnx (external data when large), config.json (llama),
    generation_config.json, tokenizer.json (given, or trained here)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = weights.shape
    if tokenizer_json is not None:
        (out_dir / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
    else:
        from models.gpt2_onnx import build_tokenizer

        build_tokenizer(s.vocab_size).save(str(out_dir / "tokenizer.json"))  # type: ignore[attr-defined]
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": s.n_layer,
        "num_attention_heads": s.n_head, "num_key_value_heads": s.n_kv_head, "hidden_size": s.hidden,
        "intermediate_size": s.intermediate, "max_position_embeddings": s.context, "vocab_size": s.vocab_size,
        "bos_token_id": 0, "eos_token_id": 0, "rms_norm_eps": EPS, "rope_theta": ROPE_THETA, "use_cache": True,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 0}) + "\n")
    model = build_optimum_graph(weights)
    large = sum(t.ByteSize() for t in model.graph.initializer) > 32 * 2**20
    onnx.save(model, str(out_dir / "model.onnx"), save_as_external_data=large, all_tensors_to_one_file=True,
              location="model.onnx_data")
    return out_dir


def weights_from_safetensors(hf_dir: Path) -> Weights:
    """A Hugging Face Llama checkpoint's weights (safetensors, float32), as this module lays them out."""
    from safetensors.numpy import load_file

    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    shape = LlamaShape(n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
                       n_kv_head=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                       hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                       vocab_size=cfg["vocab_size"], context=cfg["max_position_embeddings"])
    t = {}
    for f in sorted(Path(hf_dir).glob("*.safetensors")):
        t.update(load_file(str(f)))

    def w(name: str) -> np.ndarray:
        return np.ascontiguousarray(t[name].astype(np.float32).T)

    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    layers = []
    for i in range(shape.n_layer):
        lw = {k: w(f"model.layers.{i}.{n}.weight") for k, n in names.items()}
        lw["ln1"] = t[f"model.layers.{i}.input_layernorm.weight"].astype(np.float32)
        lw["ln2"] = t[f"model.layers.{i}.post_attention_layernorm.weight"].astype(np.float32)
        layers.append(lw)
    embed = t["model.embed_tokens.weight"].astype(np.float32)
    head = w("lm_head.weight") if "lm_head.weight" in t else np.ascontiguousarray(embed.T)
    return Weights(shape, embed, layers, t["model.norm.weight"].astype(np.float32), head)


# ---------------------------------------------------------------- numpy reference


def _rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * g


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Non-interleaved rotary (HF Llama's rotate_half) on [heads, seq, head_dim]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def reference_logits(weights: Weights, ids: list[int]) -> np.ndarray:
    """Logits [seq, vocab] of the whole sequence, recomputed in float64."""
    s = weights.shape
    n, d, group = len(ids), s.head_dim, s.n_head // s.n_kv_head
    cos, sin = (c[:n].astype(np.float64) for c in rotary_caches(s))
    x = weights.embed[np.asarray(ids)].astype(np.float64)
    causal = np.tril(np.ones((n, n), dtype=bool))
    for lw in weights.layers:
        h = _rms(x, lw["ln1"])
        q = (h @ lw["q"]).reshape(n, s.n_head, d).transpose(1, 0, 2)
        k = (h @ lw["k"]).reshape(n, s.n_kv_head, d).transpose(1, 0, 2)
        v = (h @ lw["v"]).reshape(n, s.n_kv_head, d).transpose(1, 0, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(d), -np.inf)
        p = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attn = (p / p.sum(axis=-1, keepdims=True)) @ v
        x = x + attn.transpose(1, 0, 2).reshape(n, s.hidden) @ lw["o"]
        h = _rms(x, lw["ln2"])
        gate = h @ lw["gate"]
        x = x + (gate / (1 + np.exp(-gate)) * (h @ lw["up"])) @ lw["down"]
    return np.asarray(_rms(x, weights.norm) @ weights.lm_head)


def reference_greedy(weights: Weights, prompt_ids: list[int], steps: int) -> list[int]:
    ids, out = list(prompt_ids), []
    for _ in range(steps):
        token = int(np.argmax(reference_logits(weights, ids)[-1]))
        out.append(token)
        ids.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a tiny Llama-shaped GQA decoder folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_genai_folder(args.out, TINY, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
