"""fleetgen against its peers on the same weights: onnxruntime-genai and llama.cpp.

    .venv/bin/python tests/bench/peers.py                        # SmolLM-135M shape, 5 rounds
    .venv/bin/python tests/bench/peers.py --shape all --rounds 3 # SmolLM-135M and GPT-2-small
    .venv/bin/python tests/bench/peers.py --rounds 1 --new-tokens 32 --precisions fp32   # quick
    nice -n -10 .venv/bin/python tests/bench/peers.py ...        # on a shared machine (root)

Two shapes (`--shape smollm|gpt2|all`), seeded random weights, built through transformers +
torch 2.13.0 CPU in a bench-only virtualenv (`.venv-bench`, made by `--setup` or on first use;
never the agent's or the tests'), written once per runtime and cached under
~/.cache/fleetgen/bench/peers:

smollm: a SmolLM-135M-shaped Llama (30 layers, 9 query / 3 KV heads, hidden 576, vocab 49152)
- onnxruntime-genai's model builder, `-e cpu -p fp32|int8|int4` (fused: GroupQueryAttention
  with rotary, SimplifiedLayerNormalization, MatMulNBits; past and present share one buffer);
- "fleetgen": those folders through `fleetgen model import` (the graph as built, but a tied
  embedding / LM head held once in memory: read in place from the data file at fp32, gathered
  from the int8 head at int8; ADR 0103), run with its shared KV buffer (agent.runtime.genai +
  agent.runtime.gqa); "fleetgen-concat", an ablation: the builder's folder unchanged with the
  Optimum-style ping-pong cache;
- "fleetgen-optimum": the baseline before issue 16, the same weights as an unfused Optimum-layout
  graph (models/llama_gqa_onnx.py, as `optimum-cli export onnx` lays out a Llama; optimum itself
  needs transformers < 4.58, the builder >= 5), imported with `fleetgen model import --quantize`.
gpt2: the GPT-2-small shape (12 layers, 12 heads, hidden 768, vocab 50257). The weights are the
  project's own Optimum-layout graph (models/gpt2_onnx.py, seed 0, init x GPT2_INIT_SCALE), copied
  into a Hugging Face GPT2LMHeadModel checkpoint for transformers and llama.cpp; "fleetgen" runs
  that graph imported with `fleetgen model import [--quantize]` (its only layout: no
  fleetgen-concat / fleetgen-optimum rows). onnxruntime-genai is skipped: its builder has no
  GPT-2 architecture.
llama.cpp (both shapes): GGUF written by llama.cpp's own convert_hf_to_gguf.py (f32), taken from
  the llama-cpp-python sdist of the installed version (`pip download`, 76 MB, cached), then
  q8_0 / q4_0 by `llama_cpp.llama_model_quantize` from the f32 file (llama-quantize's defaults:
  under Q4_0 the tied embedding / LM head is Q6_K, or Q8_0 where its rows are not a multiple of
  256, as SmolLM's 576; the tensor types are in the JSON). Its KV cache is f32
  (type_k = type_v = f32) so that fp32 greedy text can equal transformers' and the cache is the
  same size as ours; "llamacpp-kvf16" (not run by default) is llama.cpp's default f16 cache.
  Timed only when llama-cpp-python is importable in the bench venv (`.venv-bench/bin/pip
  install llama-cpp-python` builds it from source, about 5 minutes on 2 cores); otherwise the
  bench says so and skips that peer.

Each measurement is a fresh process (peak RSS = its VmHWM): 2 threads, spinning on for every
runtime (ORT's default, which genai_config.json cannot turn off; llama-cpp-python's ggml is an
OpenMP build, whose libgomp workers spin before they sleep;
FLEETGEN_BENCH_SPIN=auto gives fleetgen the agent's own choice), the same 32 prompt token ids,
128 greedy new tokens (EOS ignored; llama.cpp: argmax of its logits each step), runtimes
alternating within each round, `--rounds` rounds (default 5). Timing is the same for all:
prefill = feeding the prompt (whose logits give the first token), decode tok/s = (tokens - 1) /
(time from the first token to the last); load = constructing the model, with a one-token
warm-up for fleetgen (as the agent loads) and llama.cpp (as its own tools do; it mmaps the file,
so its first eval would fault the weights in), none for onnxruntime-genai (whose sessions read
and prepack every weight while loading). The load average is recorded before every round (the
bench first waits up to `--wait-quiet` seconds for it to drop below `--quiet-load`).

Roofline: memory bandwidth is measured in the same run (numpy float64 sum and float32 max of a
512 MiB array on 2 threads, best of 20 each, before each shape and at the end; the best figure
counts, since other processes only ever lower it). Per decode step a runtime reads
    bytes/token = weight bytes read + kv_bytes_per_token x (prompt + new_tokens / 2)
where weight bytes read = every weight tensor in full, except a table only gathered from (the
token embedding when the LM head is a separate matrix, GPT-2's position table), which counts
one row; a tied embedding counts in full, as the LM head reads it. ONNX: initializers of
model.onnx; GGUF: tensors of the file (its own quantized sizes). roofline % = decode tok/s x
bytes/token / bandwidth.

Quality: fp32 greedy tokens are compared with transformers' own greedy generation on the
checkpoint; each int8 / int4 variant with the fp32 run of the same runtime (tokens equal
position by position over the new tokens, leading tokens equal) and, for the first step, the
max / mean absolute difference of its logits from that fp32 run's. The weights are random, so
perplexity would measure nothing; these say only how far quantization moves the same function
(and a deep random network amplifies any perturbation: even int8 changes the first greedy token).
On a shared machine, run it under `nice -n -10`: 2 spinning threads on 2 cores next to another
busy process lose whole time slices waiting for each other (llama.cpp's step went from ~17 ms to
50-80 ms at nice 0 next to a nice-5 test run here).

Prints a table per shape (decode tok/s median and range over rounds, median-step tok/s, paired
ratios to genai and llama.cpp, prefill ms, load ms, peak RSS, file size, KV bytes per token,
roofline %, greedy match), a quality table, the issue-16 targets as measured, and writes
tests/bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "bench" / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetgen" / "bench" / "peers"
BENCH_VENV = Path(os.environ.get("FLEETGEN_BENCH_VENV", REPO / ".venv-bench"))
BENCH_PACKAGES = ["torch==2.13.0", "transformers>=5", "onnxruntime-genai", "gguf", "onnx", "onnx-ir",
                  "safetensors", "sentencepiece"]
THREADS = 2
PROMPT_TOKENS = 32
SEED = 0
# HF's default init (0.02) gives near-uniform logits: greedy picks then hinge on rounding and
# no two runtimes agree. A wider init makes the choice decisive (speed does not depend on it).
INIT_RANGE = 0.1
# the same reason for models/gpt2_onnx.py's init (std 0.02 x scale), as tests/bench/generation.py
GPT2_INIT_SCALE = 4.0
SMOLLM_135M: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 0,
    "eos_token_id": 0,
    "initializer_range": INIT_RANGE,
}
# models/gpt2_onnx.py's SMALL, as a transformers GPT2Config
GPT2_SMALL: dict[str, Any] = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "n_positions": 1024,
    "n_ctx": 1024,
    "vocab_size": 50257,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
GGUF_TYPES = {"fp32": "F32", "int8": "Q8_0", "int4": "Q4_0"}
LLAMA_FTYPES = {"int8": 7, "int4": 2}  # llama_ftype: LLAMA_FTYPE_MOSTLY_Q8_0, LLAMA_FTYPE_MOSTLY_Q4_0
GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
PEERS = ("genai", "llamacpp")


@dataclass(frozen=True)
class Shape:
    key: str
    label: str
    config: dict[str, Any]
    layers: int
    kv_heads: int
    head_dim: int
    # runtime -> why this shape does not run it
    unsupported: dict[str, str]

    def kv_bytes_per_token(self, itemsize: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * itemsize


SHAPES = {
    "smollm": Shape("smollm", "SmolLM-135M shape", SMOLLM_135M, 30, 3, 64, {}),
    "gpt2": Shape("gpt2", "GPT-2-small shape", GPT2_SMALL, 12, 12, 64, {
        "genai": "onnxruntime_genai.models.builder has no GPT-2 architecture",
        "fleetgen-concat": "GPT-2 has only the Optimum layout (concat cache): that is the fleetgen row",
        "fleetgen-optimum": "GPT-2 has only the Optimum layout: that is the fleetgen row",
    }),
}


# ---------------------------------------------------------------- workers (one process each)


def vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def prompt_ids(tokenizer_json: Path) -> list[int]:
    from tokenizers import Tokenizer

    from tests.bench.generation import SEED_TEXT

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(SEED_TEXT * 4).ids[:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS, len(ids)
    return list(ids)


def save_logits(path: str, logits: Any) -> None:
    """First-step logits for the quality table ('-': not asked for)."""
    if path != "-":
        import numpy as np

        np.save(path, np.asarray(logits, np.float32).reshape(-1))


def write_tokenizer_files(out: Path, max_length: int) -> None:
    from models.gpt2_onnx import EOS_TOKEN

    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN, "model_max_length": max_length,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}) + "\n")


def build_hf(out: Path) -> dict[str, Any]:
    """The seeded SmolLM-shaped checkpoint: config.json + model.safetensors + tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.gpt2_onnx import build_tokenizer

    torch.manual_seed(SEED)
    config = LlamaConfig(**{k: v for k, v in SMOLLM_135M.items() if k != "architectures"})
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    build_tokenizer(SMOLLM_135M["vocab_size"]).save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    write_tokenizer_files(out, SMOLLM_135M["max_position_embeddings"])
    return {"params": sum(p.numel() for p in model.parameters())}


def build_gpt2_hf(optimum: Path, out: Path) -> dict[str, Any]:
    """models/gpt2_onnx.py's weights (its Optimum-layout model.onnx) as a GPT2LMHeadModel.

    The graph's initializers are named `<hint>_<counter>`; its MatMul weights are [in, out] as
    GPT-2's Conv1D keeps them, c_attn is q|k|v along the output as in GPT-2, and its LM head is
    an untied copy of the token embedding, so the checkpoint ties them."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import GPT2Config, GPT2LMHeadModel

    graph = onnx.load(str(optimum / "model.onnx")).graph
    w = {init.name.rsplit("_", 1)[0]: numpy_helper.to_array(init) for init in graph.initializer}
    if not np.array_equal(w["lm_head"], w["wte"].T):
        raise SystemExit("the graph's LM head is not the token embedding: cannot tie")
    c = GPT2_SMALL
    state = {"transformer.wte.weight": w["wte"], "transformer.wpe.weight": w["wpe"],
             "transformer.ln_f.weight": w["ln_f_g"], "transformer.ln_f.bias": w["ln_f_b"]}
    for i in range(c["n_layer"]):
        for hf_name, ours in (("ln_1.weight", f"ln1_{i}_g"), ("ln_1.bias", f"ln1_{i}_b"),
                              ("attn.c_attn.weight", f"c_attn_w_{i}"), ("attn.c_attn.bias", f"c_attn_b_{i}"),
                              ("attn.c_proj.weight", f"c_proj_w_{i}"), ("attn.c_proj.bias", f"c_proj_b_{i}"),
                              ("ln_2.weight", f"ln2_{i}_g"), ("ln_2.bias", f"ln2_{i}_b"),
                              ("mlp.c_fc.weight", f"c_fc_w_{i}"), ("mlp.c_fc.bias", f"c_fc_b_{i}"),
                              ("mlp.c_proj.weight", f"mlp_proj_w_{i}"), ("mlp.c_proj.bias", f"mlp_proj_b_{i}")):
            state[f"transformer.h.{i}.{hf_name}"] = w[ours]
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in c.items() if k != "architectures"})).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()},
                                                strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise SystemExit(f"GPT-2 checkpoint: missing {missing}, unexpected {unexpected}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    shutil.copyfile(optimum / "tokenizer.json", out / "tokenizer.json")
    write_tokenizer_files(out, c["n_positions"])
    return {"params": sum(p.numel() for p in model.parameters())}


def run_transformers(hf: Path, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids(hf / "tokenizer.json")])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
    return {"tokens": out[0, PROMPT_TOKENS:].tolist()}


def run_fleetgen(folder: Path, new_tokens: int, kv_cache: str, logits_path: str) -> dict[str, Any]:
    import dataclasses

    from agent.runtime import resolve_spin
    from agent.runtime.engine import EngineOptions
    from agent.runtime.loader import open_folder
    from agent.runtime.text import TextGenerator

    # load_model's steps, with the KV layout forced for the ablation. Spinning as onnxruntime-genai
    # runs (ORT's default, on; genai_config.json has no key for it), unless FLEETGEN_BENCH_SPIN=auto
    # asks for the agent's own choice by situation (agent.runtime.spin)
    t0 = time.perf_counter()
    spin = {"auto": None, "on": True, "off": False}[os.environ.get("FLEETGEN_BENCH_SPIN", "on")]
    options = resolve_spin(EngineOptions(threads=THREADS, spin=spin))
    info, engine = open_folder(folder, options)
    info = dataclasses.replace(info, kv_cache=kv_cache)  # type: ignore[arg-type]
    gen = TextGenerator(info, engine)
    gen.decoder.reset(2)
    gen.decoder.forward([0])
    load_ms = (time.perf_counter() - t0) * 1000
    ids = prompt_ids(folder / "tokenizer.json")
    text = gen.tokenizer.decode(ids)
    if gen.encode_prompt(text) != ids:
        raise SystemExit(f"the prompt re-encodes to other ids ({len(gen.encode_prompt(text))} tokens)")
    req = gen.request(text, max_tokens=new_tokens, greedy=True, repetition_penalty=1.0, ignore_eos=True)
    chunks: list[str] = []
    result = gen.generate(req, on_text=chunks.append)
    t = result.timings
    steps = sorted(result.step_ms)
    if logits_path != "-":  # after the timed run: the prompt again, for its logits
        gen.decoder.reset(PROMPT_TOKENS + 1)
        save_logits(logits_path, gen.decoder.forward(ids))
    return {
        "load_ms": load_ms,
        "prefill_ms": t.prefill_ms,
        "decode_tok_s": t.decode_tokens_per_s,
        "median_step_tok_s": 1000 / steps[len(steps) // 2],
        "tokens": list(result.token_ids),
        "kv_bytes_per_token": gen.layout.kv_bytes_per_token,
        "spin": options.spin,
    }


def run_genai(folder: Path, new_tokens: int, logits_path: str) -> dict[str, Any]:
    import numpy as np
    import onnxruntime_genai as og

    cfg = json.loads((folder / "genai_config.json").read_text())
    # the same thread count as ours (genai reads session options from its config)
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    so["intra_op_num_threads"] = THREADS
    so["inter_op_num_threads"] = 1
    config_dir = folder.parent / (folder.name + "-threads")
    if not config_dir.exists():
        config_dir.mkdir()
        for f in folder.iterdir():
            if f.name != "genai_config.json":
                (config_dir / f.name).symlink_to(f)
    (config_dir / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    ids = prompt_ids(folder / "tokenizer.json")
    t0 = time.perf_counter()
    model = og.Model(str(config_dir))
    load_ms = (time.perf_counter() - t0) * 1000
    params = og.GeneratorParams(model)
    total = PROMPT_TOKENS + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    t1 = time.perf_counter()
    save_logits(logits_path, np.asarray(gen.get_logits()).reshape(-1)[-cfg["model"]["vocab_size"]:])
    tokens, token_at = [], []
    while not gen.is_done():
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
        token_at.append(time.perf_counter())
    # the first token comes out of prefill's logits (no run), as ours does
    decode_s = token_at[-1] - token_at[0]
    gaps = sorted(b - a for a, b in itertools.pairwise(token_at))
    dec = cfg["model"]["decoder"]
    kv = 2 * dec["num_hidden_layers"] * dec.get("num_key_value_heads", dec["num_attention_heads"]) * dec["head_size"]
    return {
        "load_ms": load_ms,
        "prefill_ms": (t1 - t0) * 1000,
        "decode_tok_s": (len(tokens) - 1) / decode_s if decode_s > 0 else 0.0,
        "median_step_tok_s": 1 / gaps[len(gaps) // 2],
        "tokens": tokens,
        "kv_bytes_per_token": kv * 4,
    }


def run_llamacpp(gguf_path: Path, new_tokens: int, kv_type: int, logits_path: str) -> dict[str, Any]:
    """llama.cpp through llama-cpp-python's low-level loop: eval the prompt, argmax its last
    logits, eval that token, ... (the sampler chain would add its own per-token work)."""
    import llama_cpp
    import numpy as np

    ids = prompt_ids(gguf_path.parent / "tokenizer.json")
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=PROMPT_TOKENS + new_tokens + 8, n_threads=THREADS,
                          n_threads_batch=THREADS, verbose=False, logits_all=False, type_k=kv_type, type_v=kv_type)
    # a one-token warm-up, as llama.cpp's own tools run (common_init: `--warmup`, on by default) and
    # as fleetgen's load does: the weights are mmapped, so the first eval would otherwise also
    # fault them in, and prefill would time the page cache, not the model. The next eval drops
    # the cached position (eval removes everything from n_tokens on).
    llm.eval([0])
    llm.reset()
    load_ms = (time.perf_counter() - t0) * 1000
    n_vocab = llm.n_vocab()

    def last_logits() -> Any:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    save_logits(logits_path, last_logits())
    tokens, token_at = [], []
    for _ in range(new_tokens):
        token = int(np.argmax(last_logits()))
        tokens.append(token)
        token_at.append(time.perf_counter())
        if len(tokens) < new_tokens:
            llm.eval([token])
    gaps = sorted(b - a for a, b in itertools.pairwise(token_at))
    return {
        "load_ms": load_ms,
        "prefill_ms": (t1 - t0) * 1000,
        "decode_tok_s": (len(tokens) - 1) / (token_at[-1] - token_at[0]),
        "median_step_tok_s": 1 / gaps[len(gaps) // 2],
        "tokens": tokens,
        "kv_bytes_per_token": kv_bytes_llamacpp(llm, kv_type),
        "kv_type": {GGML_TYPE_F32: "f32", GGML_TYPE_F16: "f16"}.get(kv_type, str(kv_type)),
    }


def kv_bytes_llamacpp(llm: Any, kv_type: int) -> int:
    import llama_cpp

    model = llm.model
    layers = llama_cpp.llama_model_n_layer(model)
    heads = llama_cpp.llama_model_n_head(model)
    kv_heads = llama_cpp.llama_model_n_head_kv(model)
    head_dim = llama_cpp.llama_model_n_embd(model) // heads
    return 2 * layers * kv_heads * head_dim * (4 if kv_type == GGML_TYPE_F32 else 2)


def convert_gguf(llama_cpp_dir: Path, hf: Path, out: Path) -> dict[str, Any]:
    """llama.cpp's convert_hf_to_gguf.py, f32. Our tokenizer is a byte-level BPE with GPT-2's
    split regex, which the converter's table of known tokenizers (hashes of real checkpoints)
    cannot know: it is told "gpt-2". The bench feeds token ids, so this only labels the file."""
    sys.path.insert(0, str(llama_cpp_dir))
    sys.path.insert(1, str(llama_cpp_dir / "gguf-py"))
    import conversion.base  # type: ignore[import-not-found]
    import convert_hf_to_gguf  # type: ignore[import-not-found]

    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    sys.argv = ["convert_hf_to_gguf.py", str(hf), "--outfile", str(out), "--outtype", "f32"]
    convert_hf_to_gguf.main()
    return {"bytes": out.stat().st_size}


def quantize_gguf(src: Path, out: Path, precision: str) -> dict[str, Any]:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[precision]
    params.nthread = THREADS
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize {precision} returned {rc}")
    return {"bytes": out.stat().st_size}


def gguf_info(path: Path) -> dict[str, Any]:
    """Bytes one decode step reads (see the module docstring) and the tensor types."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    gathered = {"position_embd.weight"} | ({"token_embd.weight"} if "output.weight" in tensors else set())
    read = 0
    types: dict[str, int] = {}
    for name, t in tensors.items():
        n = int(t.n_bytes)
        rows = int(t.shape[-1]) if len(t.shape) > 1 else 1  # gguf shapes are [columns, rows]
        read += n // rows if name in gathered else n
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"bytes_read_per_token": read, "tensor_types": types,
            "types_by_tensor": {k: tensors[k].tensor_type.name for k in ("token_embd.weight", "output.weight")
                                if k in tensors}}


def worker(argv: list[str]) -> None:
    mode, rest = argv[0], argv[1:]
    if mode == "build-hf":
        result = build_hf(Path(rest[0]))
    elif mode == "gpt2-export":
        from models.gpt2_onnx import SMALL, write_optimum_folder

        write_optimum_folder(Path(rest[0]), SMALL, seed=SEED, init_scale=GPT2_INIT_SCALE)
        result = {}
    elif mode == "gpt2-hf":
        result = build_gpt2_hf(Path(rest[0]), Path(rest[1]))
    elif mode == "transformers":
        result = run_transformers(Path(rest[0]), int(rest[1]))
    elif mode == "fleetgen":
        result = run_fleetgen(Path(rest[0]), int(rest[1]), rest[2], rest[3])
    elif mode == "genai":
        result = run_genai(Path(rest[0]), int(rest[1]), rest[2])
    elif mode == "llamacpp":
        result = run_llamacpp(Path(rest[0]), int(rest[1]), int(rest[2]), rest[3])
    elif mode == "optimum-export":
        from models.llama_gqa_onnx import weights_from_safetensors, write_optimum_folder

        hf = Path(rest[0])
        write_optimum_folder(Path(rest[1]), weights_from_safetensors(hf), hf / "tokenizer.json")
        result = {}
    elif mode == "gguf-convert":
        result = convert_gguf(Path(rest[0]), Path(rest[1]), Path(rest[2]))
    elif mode == "gguf-quantize":
        result = quantize_gguf(Path(rest[0]), Path(rest[1]), rest[2])
    elif mode == "gguf-info":
        result = gguf_info(Path(rest[0]))
    else:
        raise SystemExit(f"unknown worker mode {mode}")
    result["peak_rss_bytes"] = vm_hwm_bytes()
    print(json.dumps(result))


# ---------------------------------------------------------------- orchestration


def bench_python() -> Path:
    return BENCH_VENV / "bin" / "python"


def setup_bench_venv() -> None:
    if not bench_python().is_file():
        print(f"creating the bench virtualenv {BENCH_VENV} (torch 2.13.0 CPU, transformers, "
              "onnxruntime-genai, gguf; a few minutes) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(bench_python()), "-m", "pip", "install", "--quiet", *BENCH_PACKAGES], check=True)
    if not has_module(bench_python(), "llama_cpp"):
        print("building llama-cpp-python from source (about 5 minutes on 2 cores; needs cmake and a C++ "
              "compiler) ...", file=sys.stderr)
        if subprocess.run([str(bench_python()), "-m", "pip", "install", "--quiet", "llama-cpp-python"]).returncode:
            print("llama-cpp-python did not build: the bench will skip llama.cpp", file=sys.stderr)


def has_module(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def call(python: Path, *args: str, timeout: float = 1800) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.run([str(python), __file__, "--worker", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def build_builder(hf: Path, out: Path, precision: str) -> None:
    """onnxruntime-genai's builder (release-side tooling; here from the bench venv)."""
    cmd = [str(bench_python()), "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", precision, "-e", "cpu", "-c", str(out.parent / "builder-cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        raise RuntimeError(f"builder {precision} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")


def fleetgen_import(src: Path, out: Path, name: str, precision: str, fuse: bool = False,
                    quantize: bool = True) -> Path:
    """`fleetgen model import [--fuse] [--quantize]` of an Optimum-layout export (or, with
    `quantize=False`, of a folder onnxruntime-genai's builder wrote at `precision`)."""
    if not (out / "manifest.json").is_file():
        print(f"fleetgen model import {precision} into {out} ...", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "controller", "model", "import", str(src), "-o", str(out), "--name",
               f"{name}-{precision}"] + (["--fuse"] if fuse else []) + (
               [] if precision == "fp32" or not quantize else ["--quantize", precision])
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"import {precision} failed: {proc.stderr[-1500:]}")
    return out


def llama_cpp_sources(bench: Path) -> Path:
    """convert_hf_to_gguf.py + conversion/ + gguf-py/ of the llama.cpp that the installed
    llama-cpp-python vendors (its sdist, fetched once with pip)."""
    version = subprocess.run([str(bench), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    root = CACHE / "llama-cpp-src" / version
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    sdist_dir = CACHE / "llama-cpp-src"
    print(f"fetching the llama-cpp-python {version} sdist (76 MB) for llama.cpp's converter ...", file=sys.stderr)
    subprocess.run([str(bench), "-m", "pip", "download", "--quiet", f"llama-cpp-python=={version}", "--no-deps",
                    "--no-binary", ":all:", "-d", str(sdist_dir)], check=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist_dir / f"llama_cpp_python-{version}.tar.gz") as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and member.isfile() and (
                    rel == "convert_hf_to_gguf.py" or rel.startswith(("conversion/", "gguf-py/"))):
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
    return root


def gguf_variants(bench: Path, hf: Path, base: Path, precisions: list[str]) -> dict[str, Path]:
    """f32 by llama.cpp's converter, q8_0 / q4_0 by llama_model_quantize from it."""
    f32 = base / "llamacpp-f32" / "model.gguf"
    if not f32.is_file():
        print(f"llama.cpp's convert_hf_to_gguf.py f32 into {f32} ...", file=sys.stderr)
        f32.parent.mkdir(parents=True, exist_ok=True)
        call(bench, "gguf-convert", str(llama_cpp_sources(bench)), str(hf), str(f32))
    out = {"fp32": f32}
    for p in precisions:
        if p == "fp32":
            continue
        path = base / f"llamacpp-{GGUF_TYPES[p].lower()}" / "model.gguf"
        if not path.is_file():
            print(f"llama_model_quantize {GGUF_TYPES[p]} into {path} ...", file=sys.stderr)
            path.parent.mkdir(parents=True, exist_ok=True)
            call(bench, "gguf-quantize", str(f32), str(path), p)
        out[p] = path
    for path in out.values():
        shutil.copyfile(hf / "tokenizer.json", path.parent / "tokenizer.json")
    return out


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("model.onnx*"))


def wait_quiet(threshold: float, max_wait_s: float) -> float:
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    while load > threshold and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def bandwidth(size: int = 512 * 2**20, repeats: int = 20) -> float:
    """Bytes/s read from DRAM: the best of two reductions of a 512 MiB array split over THREADS
    threads (numpy releases the GIL in them), best of `repeats`: tests/bench/generation.py's
    float64 sum, and a float32 max, which does less work per byte and reads faster here."""
    import numpy as np

    from tests.bench.generation import read_bandwidth

    return max(read_bandwidth(THREADS, size, repeats),
               read_bandwidth(THREADS, size, repeats, reduce=np.max, dtype=np.float32))


@dataclass
class Artifact:
    path: Path
    file_bytes: int
    weight_bytes_read: int
    detail: dict[str, Any]


def onnx_artifact(folder: Path) -> Artifact:
    from tests.bench.generation import weight_bytes_read

    return Artifact(folder, folder_bytes(folder), weight_bytes_read(folder / "model.onnx")[1], {})


def prepare(shape: Shape, bench: Path, here: Path, precisions: list[str], runtimes: list[str],
            llamacpp: bool) -> tuple[Path, dict[tuple[str, str], Artifact]]:
    """Build (or find in the cache) the checkpoint and every runtime's files for `shape`."""
    base = CACHE / {"smollm": "smollm-135m", "gpt2": "gpt2-small"}[shape.key]
    hf = base / "hf"
    artifacts: dict[tuple[str, str], Artifact] = {}
    if shape.key == "smollm":
        if not (hf / "model.safetensors").is_file():
            print(f"building the seeded SmolLM-135M-shaped checkpoint into {hf} ...", file=sys.stderr)
            call(bench, "build-hf", str(hf))
        export = base / "optimum-export"
        for p in precisions:
            folder = base / f"genai-{p}"
            if any(rt in runtimes for rt in ("fleetgen", "fleetgen-concat", "genai")):
                if not (folder / "genai_config.json").is_file():
                    print(f"building onnxruntime-genai {p} into {folder} ...", file=sys.stderr)
                    build_builder(hf, folder, p)
                genai = onnx_artifact(folder)
                for rt in ("fleetgen-concat", "genai"):
                    artifacts[(rt, p)] = genai
                # as a user brings a builder folder: `fleetgen model import` (a tied table held once, ADR 0103)
                artifacts[("fleetgen", p)] = onnx_artifact(
                    fleetgen_import(folder, base / f"fleetgen-{p}", "smollm", p, quantize=False))
            if "fleetgen-optimum" in runtimes:
                if not (export / "model.onnx").is_file():
                    print(f"writing the Optimum-layout export into {export} ...", file=sys.stderr)
                    call(bench, "optimum-export", str(hf), str(export))
                artifacts[("fleetgen-optimum", p)] = onnx_artifact(
                    fleetgen_import(export, base / f"optimum-{p}", "smollm-optimum", p))
    else:
        export = base / "optimum-export"
        if not (export / "model.onnx").is_file():
            print(f"writing the GPT-2-small Optimum-layout graph (models/gpt2_onnx.py) into {export} ...",
                  file=sys.stderr)
            call(here, "gpt2-export", str(export))
        if not (hf / "model.safetensors").is_file():
            print(f"copying its weights into a GPT2LMHeadModel checkpoint {hf} ...", file=sys.stderr)
            call(bench, "gpt2-hf", str(export), str(hf))
        if "fleetgen" in runtimes:
            for p in precisions:
                # As a user imports an Optimum export for speed: with ORT's transformers fusions.
                artifacts[("fleetgen", p)] = onnx_artifact(
                    fleetgen_import(export, base / f"optimum-fused-{p}", "gpt2", p, fuse=True))
    if llamacpp:
        for p, path in gguf_variants(bench, hf, base, precisions).items():
            info = call(bench, "gguf-info", str(path))
            art = Artifact(path, path.stat().st_size, info["bytes_read_per_token"],
                           {k: info[k] for k in ("tensor_types", "types_by_tensor")})
            for rt in ("llamacpp", "llamacpp-kvf16"):
                artifacts[(rt, p)] = art
    return hf, artifacts


def run_one(rt: str, art: Artifact, shape: Shape, new_tokens: int, logits: str, here: Path,
            bench: Path) -> dict[str, Any]:
    n, path = str(new_tokens), str(art.path)
    if rt.startswith("fleetgen"):
        shared = rt == "fleetgen" and shape.key == "smollm"  # the builder's graph; else the Optimum layout
        return call(here, "fleetgen", path, n, "shared" if shared else "concat", logits)
    if rt == "genai":
        return call(bench, "genai", path, n, logits)
    kv = GGML_TYPE_F16 if rt == "llamacpp-kvf16" else GGML_TYPE_F32
    return call(bench, "llamacpp", path, n, str(kv), logits)


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def bench_shape(shape: Shape, args: argparse.Namespace, bench: Path, here: Path, precisions: list[str],
                runtimes: list[str], llamacpp: bool, bw: list[float]) -> dict[str, Any]:
    import numpy as np

    skipped = {rt: why for rt, why in shape.unsupported.items() if rt in runtimes}
    runtimes = [rt for rt in runtimes if rt not in skipped]
    hf, artifacts = prepare(shape, bench, here, precisions, runtimes, llamacpp)
    print(f"{shape.label}: transformers greedy reference ...", file=sys.stderr)
    reference = call(bench, "transformers", str(hf), str(args.new_tokens))["tokens"]
    bw.append(bandwidth())
    load_start = wait_quiet(args.quiet_load, args.wait_quiet)
    logits_dir = CACHE / "logits"
    logits_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(rt, p): [] for p in precisions for rt in runtimes}
    loads: list[list[float]] = []
    for r in range(args.rounds):
        loads.append(list(os.getloadavg()))
        for p in precisions:
            for rt in runtimes:
                print(f"  {shape.key} round {r + 1}/{args.rounds} {p} {rt} (load {os.getloadavg()[0]:.1f}) ...",
                      file=sys.stderr, flush=True)
                logits = str(logits_dir / f"{shape.key}-{rt}-{p}.npy") if r == 0 else "-"
                try:
                    res = run_one(rt, artifacts[(rt, p)], shape, args.new_tokens, logits, here, bench)
                except RuntimeError as e:
                    print(f"    {rt} {p} failed: {str(e)[:600]}", file=sys.stderr)
                    continue
                res["round"] = r
                runs[(rt, p)].append(res)
    rows = []
    for (rt, p), rs in runs.items():
        if not rs:
            continue
        art = artifacts[(rt, p)]
        dec = [x["decode_tok_s"] for x in rs]
        bytes_per_token = art.weight_bytes_read + rs[0]["kv_bytes_per_token"] * (PROMPT_TOKENS + args.new_tokens / 2)
        row: dict[str, Any] = {
            "runtime": rt,
            "precision": p,
            "rounds": len(rs),
            "decode_tok_s_median": median(dec),
            "decode_tok_s_min": min(dec),
            "decode_tok_s_max": max(dec),
            "median_step_tok_s": median([x["median_step_tok_s"] for x in rs]),
            "prefill_ms": median([x["prefill_ms"] for x in rs]),
            "load_ms": median([x["load_ms"] for x in rs]),
            "peak_rss_bytes": max(x["peak_rss_bytes"] for x in rs),
            "file_bytes": art.file_bytes,
            "weight_bytes_read_per_token": art.weight_bytes_read,
            "kv_bytes_per_token": rs[0]["kv_bytes_per_token"],
            "bytes_per_token": bytes_per_token,
            "roofline_pct": 100 * median(dec) * bytes_per_token / max(bw),
            "greedy_match_transformers": rs[0]["tokens"] == reference,
            "greedy_prefix_match": first_divergence(rs[0]["tokens"], reference),
            "same_tokens_every_round": all(x["tokens"] == rs[0]["tokens"] for x in rs),
            **({"gguf": art.detail} if art.detail else {}),
        }
        fp32 = runs.get((rt, "fp32"))
        if p != "fp32" and fp32:
            mine, theirs = rs[0]["tokens"], fp32[0]["tokens"]
            row["quality_vs_own_fp32"] = q = {
                "tokens_equal": sum(a == b for a, b in zip(mine, theirs, strict=False)),
                "tokens": len(theirs),
                "leading_equal": first_divergence(mine, theirs),
            }
            a, b = logits_dir / f"{shape.key}-{rt}-{p}.npy", logits_dir / f"{shape.key}-{rt}-fp32.npy"
            if a.is_file() and b.is_file():
                diff = np.abs(np.load(a) - np.load(b))
                q["first_step_logits_max_abs_diff"] = float(diff.max())
                q["first_step_logits_mean_abs_diff"] = float(diff.mean())
        rows.append(row)
    pair_ratios(rows, runs)
    return {
        "shape": f"{shape.label} (random seeded weights)",
        "config": shape.config,
        "runtimes": runtimes,
        "load_average_at_start": load_start,
        "load_average_per_round": loads,
        "load_average_at_end": list(os.getloadavg()),
        "skipped": skipped,
        "rows": rows,
        "targets": targets(rows),
        "runs": {f"{rt}/{p}": [{k: v for k, v in x.items() if k != "tokens"} for x in rs]
                 for (rt, p), rs in runs.items()},
    }


def pair_ratios(rows: list[dict[str, Any]], runs: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """fleetgen rows against each peer: the ratio of medians, and per round against the peer's
    run in the same round (the same machine weather): on a shared machine, the figure to read."""
    by = {(r["runtime"], r["precision"]): r for r in rows}
    for r in rows:
        if not r["runtime"].startswith("fleetgen"):
            continue
        for peer in (*PEERS, "llamacpp-kvf16"):
            other = by.get((peer, r["precision"]))
            if not other:
                continue
            r[f"decode_vs_{peer}"] = r["decode_tok_s_median"] / other["decode_tok_s_median"]
            r[f"rss_vs_{peer}"] = r["peak_rss_bytes"] / other["peak_rss_bytes"]
            mine = {x["round"]: x for x in runs[(r["runtime"], r["precision"])]}
            theirs = {x["round"]: x for x in runs[(peer, r["precision"])]}
            for metric in ("decode_tok_s", "median_step_tok_s", "prefill_ms"):
                pairs = [mine[k][metric] / theirs[k][metric] for k in mine if k in theirs and theirs[k][metric]]
                if pairs:
                    r[f"paired_{metric}_vs_{peer}"] = median(pairs)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 16's targets, as measured for the "fleetgen" row at each precision: decode >= 1.0x
    each peer and prefill no slower (paired per round), peak RSS <= 1.1x the lower peer's, fp32
    greedy tokens equal to transformers'."""
    by = {(r["runtime"], r["precision"]): r for r in rows}
    out: dict[str, Any] = {}
    for (rt, p), r in by.items():
        if rt != "fleetgen":
            continue
        t: dict[str, Any] = {}
        for peer in PEERS:
            if f"paired_decode_tok_s_vs_{peer}" in r:
                t[f"decode_vs_{peer}"] = r[f"paired_decode_tok_s_vs_{peer}"]
                t[f"decode_vs_{peer}_met"] = r[f"paired_decode_tok_s_vs_{peer}"] >= 1.0
                # prefill time ratio: <= 1 is no slower
                t[f"prefill_time_vs_{peer}"] = r[f"paired_prefill_ms_vs_{peer}"]
                t[f"prefill_vs_{peer}_met"] = r[f"paired_prefill_ms_vs_{peer}"] <= 1.0
        peers_rss = [by[(peer, p)]["peak_rss_bytes"] for peer in PEERS if (peer, p) in by]
        if peers_rss:
            t["rss_vs_lower_peer"] = r["peak_rss_bytes"] / min(peers_rss)
            t["rss_met"] = t["rss_vs_lower_peer"] <= 1.1
        if p == "fp32":
            t["greedy_equals_transformers"] = r["greedy_match_transformers"]
        out[p] = t
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help="create/refresh the bench virtualenv and exit")
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="smollm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--runtimes", default="fleetgen,fleetgen-concat,fleetgen-optimum,genai,llamacpp",
                        help="also: llamacpp-kvf16 (llama.cpp's default f16 KV cache)")
    parser.add_argument("--quiet-load", type=float, default=1.0, help="load average counted as quiet")
    parser.add_argument("--wait-quiet", type=float, default=60.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    if args.setup or not bench_python().is_file():
        setup_bench_venv()
        if args.setup:
            return 0
    here, bench = Path(sys.executable), bench_python()
    precisions = args.precisions.split(",")
    runtimes = args.runtimes.split(",")
    known = {"fleetgen", "fleetgen-concat", "fleetgen-optimum", "genai", "llamacpp", "llamacpp-kvf16"}
    if set(runtimes) - known or set(precisions) - set(GGUF_TYPES):
        parser.error(f"runtimes are some of {sorted(known)}; precisions some of {sorted(GGUF_TYPES)}")
    skipped: dict[str, str] = {}
    llamacpp = any(rt.startswith("llamacpp") for rt in runtimes)
    if llamacpp and not has_module(bench, "llama_cpp"):
        for rt in [rt for rt in runtimes if rt.startswith("llamacpp")]:
            skipped[rt] = (f"llama-cpp-python is not installed in {BENCH_VENV} (`.venv-bench/bin/pip install "
                           "llama-cpp-python` or `--setup` builds it from source, about 5 minutes on 2 cores); "
                           "GGUF files are neither written (quantizing needs it) nor timed")
            runtimes.remove(rt)
        llamacpp = False
    shapes = list(SHAPES.values()) if args.shape == "all" else [SHAPES[args.shape]]
    bw: list[float] = []
    docs = {}
    for shape in shapes:
        docs[shape.key] = bench_shape(shape, args, bench, here, precisions, runtimes, llamacpp, bw)
    bw.append(bandwidth())
    for shape in shapes:
        doc = docs[shape.key]
        for r in doc["rows"]:  # against the best bandwidth of the whole run
            r["roofline_pct"] = 100 * r["decode_tok_s_median"] * r["bytes_per_token"] / max(bw)
        print(table(shape, doc, args, max(bw)))
        print()
        for name, why in {**skipped, **doc["skipped"]}.items():
            print(f"skipped {name}: {why}")
    out = {
        "schema": 2,
        "threads": THREADS,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "bandwidth_bytes_per_s": max(bw),
        "bandwidth_samples": bw,
        "skipped": skipped,
        "ts": time.time(),
        "shapes": docs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def fmt(r: dict[str, Any], key: str, width: int, spec: str = ".2f") -> str:
    return f"{r[key]:>{width}{spec}}" if key in r else f"{'-':>{width}}"


def table(shape: Shape, doc: dict[str, Any], args: argparse.Namespace, bw: float) -> str:
    rows = doc["rows"]
    head = (f"{'runtime':<17}{'prec':<6}{'decode tok/s (min-max)':>24}{'step':>7}{'xgenai':>8}{'xl.cpp':>8}"
            f"{'prefill ms':>11}{'pf/gen':>7}{'pf/l.c':>7}{'load ms':>8}{'RSS MiB':>8}{'file MiB':>9}"
            f"{'KV B/tok':>9}{'roof%':>6}{'=HF':>5}")
    one_min = [lo[0] for lo in doc["load_average_per_round"]]
    lines = [
        f"{shape.label}, {THREADS} threads, {PROMPT_TOKENS}-token prompt, {args.new_tokens} greedy tokens, "
        f"{args.rounds} alternating rounds; bandwidth {bw / 1e9:.1f} GB/s; 1-min load average per round: "
        + ", ".join(f"{x:.1f}" for x in one_min) + f" on {os.cpu_count()} CPUs",
        head, "-" * len(head),
    ]
    for r in rows:
        rng = f"{r['decode_tok_s_median']:.1f} ({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f})"
        match = ("yes" if r["greedy_match_transformers"] else f"{r['greedy_prefix_match']}") \
            if r["precision"] == "fp32" else "-"
        lines.append(
            f"{r['runtime']:<17}{r['precision']:<6}{rng:>24}{r['median_step_tok_s']:>7.1f}"
            f"{fmt(r, 'paired_decode_tok_s_vs_genai', 8)}{fmt(r, 'paired_decode_tok_s_vs_llamacpp', 8)}"
            f"{r['prefill_ms']:>11.1f}{fmt(r, 'paired_prefill_ms_vs_genai', 7)}"
            f"{fmt(r, 'paired_prefill_ms_vs_llamacpp', 7)}{r['load_ms']:>8.0f}{r['peak_rss_bytes'] / 2**20:>8.0f}"
            f"{r['file_bytes'] / 2**20:>9.1f}{r['kv_bytes_per_token']:>9}{r['roofline_pct']:>6.0f}{match:>5}"
        )
    lines += [
        "xgenai / xl.cpp: decode tok/s over the peer's, median over rounds of the ratio to its run in the same "
        "round; pf/gen, pf/l.c: prefill time over the peer's, the same way (<= 1: no slower)",
        "roof%: decode tok/s x bytes read per token / bandwidth; =HF: fp32 greedy tokens equal transformers' "
        "(else how many leading tokens agree)",
    ]
    quality = [r for r in rows if "quality_vs_own_fp32" in r]
    if quality:
        lines += ["", f"quality against the same runtime's fp32 ({args.new_tokens} greedy tokens; first-step logits)",
                  f"{'runtime':<17}{'prec':<6}{'tokens equal':>13}{'leading':>9}{'max |dlogit|':>13}{'mean':>8}"]
        for r in quality:
            q = r["quality_vs_own_fp32"]
            lines.append(f"{r['runtime']:<17}{r['precision']:<6}{q['tokens_equal']:>8}/{q['tokens']:<4}"
                         f"{q['leading_equal']:>9}{fmt(q, 'first_step_logits_max_abs_diff', 13, '.3f')}"
                         f"{fmt(q, 'first_step_logits_mean_abs_diff', 8, '.3f')}")
    if doc["targets"]:
        lines += ["", "issue 16 targets for the fleetgen row (paired ratios; met = yes/no)"]
        for p, t in doc["targets"].items():
            parts = []
            for peer in PEERS:
                if f"decode_vs_{peer}" in t:
                    parts.append(f"decode x{peer} {t[f'decode_vs_{peer}']:.2f} "
                                 f"{'yes' if t[f'decode_vs_{peer}_met'] else 'NO'}, prefill time/{peer} "
                                 f"{t[f'prefill_time_vs_{peer}']:.2f} {'yes' if t[f'prefill_vs_{peer}_met'] else 'NO'}")
            if "rss_vs_lower_peer" in t:
                parts.append(f"RSS/lower peer {t['rss_vs_lower_peer']:.2f} {'yes' if t['rss_met'] else 'NO'}")
            if "greedy_equals_transformers" in t:
                parts.append(f"fp32 = transformers {'yes' if t['greedy_equals_transformers'] else 'NO'}")
            lines.append(f"  {p}: " + "; ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
