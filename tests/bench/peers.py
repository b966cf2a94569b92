"""fleetgen against its peers on the same weights: onnxruntime-genai and llama.cpp.

    .venv/bin/python tests/bench/peers.py                        # SmolLM-135M shape, 5 rounds
    .venv/bin/python tests/bench/peers.py --rounds 1 --new-tokens 32 --precisions fp32   # quick

Builds a SmolLM-135M-shaped Llama (30 layers, 9 query / 3 KV heads, hidden 576, vocab 49152)
with seeded random weights through transformers + torch 2.13.0 CPU, in a bench-only virtualenv
(`.venv-bench`, made by `--setup` or on first use; never the agent's or the tests'), and writes
the same weights for each runtime (cached under ~/.cache/fleetgen/bench/peers):
- onnxruntime-genai's model builder, `-e cpu -p fp32|int8|int4` (fused: GroupQueryAttention
  with rotary, SimplifiedLayerNormalization, MatMulNBits; past and present share one buffer);
- fleetgen runs those same folders unchanged (agent.runtime.genai + agent.runtime.gqa), with
  its shared KV buffer ("fleetgen") and, as an ablation, with the Optimum-style ping-pong cache
  on the same graph ("fleetgen-concat");
- "fleetgen-optimum": the baseline before issue 16, the same weights as an unfused Optimum-layout
  graph (models/llama_gqa_onnx.py, as `optimum-cli export onnx` lays out a Llama; optimum itself
  needs transformers < 4.58, the builder >= 5), imported with `fleetgen model import --quantize`;
- llama.cpp: GGUF f32 / q8_0 / q4_0 with the `gguf` package; timed only when llama-cpp-python
  is importable in the bench venv (it builds from source in ~15 minutes on 2 cores): otherwise
  the bench says so and skips that peer.
Each measurement is a fresh process (peak RSS = its VmHWM): 2 threads, a 32-token prompt, 128
greedy new tokens (EOS ignored), runtimes alternating within each round, `--rounds` rounds
(default 5). The load average is recorded before every round (and the bench first waits up
to `--wait-quiet` seconds for it to drop below `--quiet-load`). Greedy tokens of each fp32
run are compared with transformers' own greedy generation on the checkpoint.

Prints a table (decode tok/s median and range over rounds, median-step tok/s, prefill ms,
load ms, peak RSS, file size, KV bytes per token, greedy match) and writes
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
import time
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
GGUF_TYPES = {"fp32": "F32", "int8": "Q8_0", "int4": "Q4_0"}


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


def build_hf(out: Path) -> dict[str, Any]:
    """The seeded checkpoint: config.json + model.safetensors + tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.gpt2_onnx import EOS_TOKEN, build_tokenizer

    torch.manual_seed(SEED)
    config = LlamaConfig(**{k: v for k, v in SMOLLM_135M.items() if k != "architectures"})
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    build_tokenizer(SMOLLM_135M["vocab_size"]).save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN, "model_max_length": SMOLLM_135M["max_position_embeddings"],
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}) + "\n")
    return {"params": sum(p.numel() for p in model.parameters())}


def run_transformers(hf: Path, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids(hf / "tokenizer.json")])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return {"tokens": out[0, PROMPT_TOKENS:].tolist()}


def run_fleetgen(folder: Path, new_tokens: int, kv_cache: str) -> dict[str, Any]:
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
    text = gen.tokenizer.decode(prompt_ids(folder / "tokenizer.json"))
    if len(gen.encode_prompt(text)) != PROMPT_TOKENS:
        raise SystemExit(f"prompt re-encodes to {len(gen.encode_prompt(text))} tokens")
    req = gen.request(text, max_tokens=new_tokens, greedy=True, repetition_penalty=1.0, ignore_eos=True)
    chunks: list[str] = []
    result = gen.generate(req, on_text=chunks.append)
    t = result.timings
    steps = sorted(result.step_ms)
    return {
        "load_ms": load_ms,
        "prefill_ms": t.prefill_ms,
        "decode_tok_s": t.decode_tokens_per_s,
        "median_step_tok_s": 1000 / steps[len(steps) // 2],
        "tokens": list(result.token_ids),
        "kv_bytes_per_token": gen.layout.kv_bytes_per_token,
        "spin": options.spin,
    }


def run_genai(folder: Path, new_tokens: int) -> dict[str, Any]:
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


def run_llamacpp(gguf_path: Path, new_tokens: int) -> dict[str, Any]:
    from llama_cpp import Llama

    ids = prompt_ids(gguf_path.parent / "tokenizer.json")
    t0 = time.perf_counter()
    llm = Llama(model_path=str(gguf_path), n_ctx=PROMPT_TOKENS + new_tokens + 8, n_threads=THREADS,
                n_threads_batch=THREADS, verbose=False, logits_all=False)
    load_ms = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    tokens, token_at = [], []
    for _ in range(new_tokens):
        token = int(llm.sample(temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0))
        tokens.append(token)
        token_at.append(time.perf_counter())
        if len(tokens) < new_tokens:
            llm.eval([token])
    gaps = sorted(b - a for a, b in itertools.pairwise(token_at))
    c = SMOLLM_135M
    kv = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    return {
        "load_ms": load_ms,
        "prefill_ms": (t1 - t0) * 1000,
        "decode_tok_s": (len(tokens) - 1) / (token_at[-1] - token_at[0]),
        "median_step_tok_s": 1 / gaps[len(gaps) // 2],
        "tokens": tokens,
        "kv_bytes_per_token": kv * 2,  # llama.cpp's default cache type is f16
    }


def write_gguf(hf: Path, out: Path, precision: str) -> dict[str, Any]:
    """The checkpoint as GGUF (llama architecture) with the gguf package: f32, q8_0 or q4_0
    weights (norms stay f32), the BPE tokenizer as a gpt2-style vocabulary."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    c = SMOLLM_135M
    tensors = load_file(str(hf / "model.safetensors"))
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[precision])
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type({"fp32": 0, "int8": 7, "int4": 2}[precision])
    tok = json.loads((hf / "tokenizer.json").read_text())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    names = [t for t, _ in vocab] + [f"[PAD{i}]" for i in range(len(vocab), c["vocab_size"])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(names)
    w.add_token_types([1] * len(vocab) + [5] * (c["vocab_size"] - len(vocab)))
    merges = tok["model"].get("merges", [])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    del Tokenizer
    h = c["hidden_size"] // c["num_attention_heads"]

    def permute(x: np.ndarray, heads: int) -> np.ndarray:
        # HF's q/k rows are in rotate_half order; llama.cpp's llama expects interleaved pairs
        return x.reshape(heads, 2, h // 2, x.shape[-1]).swapaxes(1, 2).reshape(x.shape)

    names_map = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}

    def add(name: str, data: np.ndarray) -> None:
        data = data.astype(np.float32)
        if data.ndim == 1 or precision == "fp32":
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", tensors["model.embed_tokens.weight"])
    add("output_norm.weight", tensors["model.norm.weight"])
    for i in range(c["num_hidden_layers"]):
        for src, dst in names_map.items():
            x = tensors[f"model.layers.{i}.{src}.weight"]
            if src == "self_attn.q_proj":
                x = permute(x, c["num_attention_heads"])
            elif src == "self_attn.k_proj":
                x = permute(x, c["num_key_value_heads"])
            add(f"blk.{i}.{dst}.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"bytes": out.stat().st_size}


def worker(argv: list[str]) -> None:
    mode, rest = argv[0], argv[1:]
    if mode == "build-hf":
        result = build_hf(Path(rest[0]))
    elif mode == "transformers":
        result = run_transformers(Path(rest[0]), int(rest[1]))
    elif mode == "fleetgen":
        result = run_fleetgen(Path(rest[0]), int(rest[1]), rest[2])
    elif mode == "genai":
        result = run_genai(Path(rest[0]), int(rest[1]))
    elif mode == "llamacpp":
        result = run_llamacpp(Path(rest[0]), int(rest[1]))
    elif mode == "optimum-export":
        from models.llama_gqa_onnx import weights_from_safetensors, write_optimum_folder

        hf = Path(rest[0])
        write_optimum_folder(Path(rest[1]), weights_from_safetensors(hf), hf / "tokenizer.json")
        result = {}
    elif mode == "gguf":
        result = write_gguf(Path(rest[0]), Path(rest[1]), rest[2])
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


def optimum_variant(bench: Path, hf: Path, base: Path, precision: str) -> Path:
    """The unfused Optimum-layout export (fp32), then `fleetgen model import [--quantize]`."""
    src = base / "optimum-export"
    if not (src / "model.onnx").is_file():
        print(f"writing the Optimum-layout export into {src} ...", file=sys.stderr)
        call(bench, "optimum-export", str(hf), str(src))
    out = base / f"optimum-{precision}"
    if not (out / "manifest.json").is_file():
        print(f"fleetgen model import {precision} into {out} ...", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "controller", "model", "import", str(src), "-o", str(out), "--name",
               f"smollm-optimum-{precision}"] + ([] if precision == "fp32" else ["--quantize", precision])
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"import {precision} failed: {proc.stderr[-1500:]}")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help="create/refresh the bench virtualenv and exit")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--runtimes", default="fleetgen,fleetgen-concat,fleetgen-optimum,genai,llamacpp")
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
    base = CACHE / "smollm-135m"
    hf = base / "hf"
    if not (hf / "model.safetensors").is_file():
        print(f"building the seeded SmolLM-135M-shaped checkpoint into {hf} ...", file=sys.stderr)
        call(bench, "build-hf", str(hf))
    precisions = args.precisions.split(",")
    runtimes = args.runtimes.split(",")
    skipped: dict[str, str] = {}
    if "llamacpp" in runtimes and not has_module(bench, "llama_cpp"):
        skipped["llamacpp"] = (f"llama-cpp-python is not installed in {BENCH_VENV} (it builds from source in "
                               "~15 min on 2 cores: `.venv-bench/bin/pip install llama-cpp-python`); GGUF files "
                               "are written, not timed")
        runtimes.remove("llamacpp")
    artifacts: dict[tuple[str, str], Path] = {}
    sizes: dict[tuple[str, str], int] = {}
    for p in precisions:
        folder = base / f"genai-{p}"
        if not (folder / "genai_config.json").is_file():
            print(f"building onnxruntime-genai {p} into {folder} ...", file=sys.stderr)
            build_builder(hf, folder, p)
        for rt in ("fleetgen", "fleetgen-concat", "genai"):
            artifacts[(rt, p)] = folder
            sizes[(rt, p)] = folder_bytes(folder)
        gguf_path = base / f"gguf-{GGUF_TYPES[p].lower()}" / "model.gguf"
        if not gguf_path.is_file():
            print(f"writing GGUF {GGUF_TYPES[p]} into {gguf_path} ...", file=sys.stderr)
            gguf_path.parent.mkdir(parents=True, exist_ok=True)
            (gguf_path.parent / "tokenizer.json").write_bytes((hf / "tokenizer.json").read_bytes())
            try:
                call(bench, "gguf", str(hf), str(gguf_path), p)
            except RuntimeError as e:
                print(f"GGUF {p}: {e}", file=sys.stderr)
        if "fleetgen-optimum" in runtimes:
            artifacts[("fleetgen-optimum", p)] = opt = optimum_variant(bench, hf, base, p)
            sizes[("fleetgen-optimum", p)] = folder_bytes(opt)
        artifacts[("llamacpp", p)] = gguf_path
        sizes[("llamacpp", p)] = gguf_path.stat().st_size if gguf_path.is_file() else 0
    print("transformers greedy reference ...", file=sys.stderr)
    reference = call(bench, "transformers", str(hf), str(args.new_tokens))["tokens"]
    load_start = wait_quiet(args.quiet_load, args.wait_quiet)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(rt, p): [] for p in precisions for rt in runtimes}
    loads: list[list[float]] = []
    for r in range(args.rounds):
        loads.append(list(os.getloadavg()))
        for p in precisions:
            for rt in runtimes:
                print(f"  round {r + 1}/{args.rounds} {p} {rt} (load {os.getloadavg()[0]:.1f}) ...", file=sys.stderr,
                      flush=True)
                path = str(artifacts[(rt, p)])
                n = str(args.new_tokens)
                try:
                    if rt.startswith("fleetgen"):
                        kv = {"fleetgen-concat": "concat", "fleetgen-optimum": "concat"}.get(rt, "shared")
                        res = call(here, "fleetgen", path, n, kv)
                    elif rt == "genai":
                        res = call(bench, "genai", path, n)
                    else:
                        res = call(bench, "llamacpp", path, n)
                except RuntimeError as e:
                    print(f"    {rt} {p} failed: {str(e)[:600]}", file=sys.stderr)
                    continue
                res["round"] = r
                runs[(rt, p)].append(res)
    rows = []
    for (rt, p), rs in runs.items():
        if not rs:
            continue
        dec = [x["decode_tok_s"] for x in rs]
        rows.append({
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
            "file_bytes": sizes[(rt, p)],
            "kv_bytes_per_token": rs[0]["kv_bytes_per_token"],
            "greedy_match_transformers": rs[0]["tokens"] == reference,
            "greedy_prefix_match": next((i for i, (a, b) in enumerate(zip(rs[0]["tokens"], reference, strict=False))
                                         if a != b), min(len(reference), len(rs[0]["tokens"]))),
            "same_tokens_every_round": all(x["tokens"] == rs[0]["tokens"] for x in rs),
        })
    by = {(r["runtime"], r["precision"]): r for r in rows}
    for r in rows:
        for peer in ("genai", "llamacpp"):
            other = by.get((peer, r["precision"]))
            if other and r["runtime"].startswith("fleetgen"):
                r[f"decode_vs_{peer}"] = r["decode_tok_s_median"] / other["decode_tok_s_median"]
                # per round, against the peer's run in the same round (the same machine weather):
                # on a shared machine this is the figure to read
                mine = {x["round"]: x for x in runs[(r["runtime"], r["precision"])]}
                theirs = {x["round"]: x for x in runs[(peer, r["precision"])]}
                for metric in ("decode_tok_s", "median_step_tok_s", "prefill_ms"):
                    pairs = [mine[k][metric] / theirs[k][metric] for k in mine if k in theirs and theirs[k][metric]]
                    if pairs:
                        r[f"paired_{metric}_vs_{peer}"] = median(pairs)
    print(table(rows, args, loads))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    doc = {
        "schema": 1,
        "shape": "SmolLM-135M (random seeded weights)",
        "config": SMOLLM_135M,
        "threads": THREADS,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_per_round": loads,
        "load_average_at_end": list(os.getloadavg()),
        "skipped": skipped,
        "ts": time.time(),
        "rows": rows,
        "runs": {f"{rt}/{p}": [{k: v for k, v in x.items() if k != "tokens"} for x in rs]
                 for (rt, p), rs in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def table(rows: list[dict[str, Any]], args: argparse.Namespace, loads: list[list[float]]) -> str:
    head = (f"{'runtime':<17}{'prec':<6}{'decode tok/s (min-max)':>24}{'step':>7}{'vs genai':>9}{'paired':>7}"
            f"{'step pr':>8}{'vs l.cpp':>9}"
            f"{'prefill ms':>11}{'load ms':>8}{'RSS MiB':>8}{'file MiB':>9}{'KV B/tok':>9}{'=HF':>5}")
    one_min = [lo[0] for lo in loads]
    lines = [
        f"SmolLM-135M shape, {THREADS} threads, {PROMPT_TOKENS}-token prompt, {args.new_tokens} greedy tokens, "
        f"{args.rounds} alternating rounds; 1-min load average per round: "
        + ", ".join(f"{x:.1f}" for x in one_min) + f" on {os.cpu_count()} CPUs",
        head, "-" * len(head),
    ]
    for r in rows:
        vs = [f"{r[k]:>{w}.2f}" if k in r else f"{'-':>{w}}" for k, w in (
            ("decode_vs_genai", 9), ("paired_decode_tok_s_vs_genai", 7), ("paired_median_step_tok_s_vs_genai", 8),
            ("decode_vs_llamacpp", 9))]
        rng = f"{r['decode_tok_s_median']:.1f} ({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f})"
        match = "yes" if r["greedy_match_transformers"] else f"{r['greedy_prefix_match']}"
        lines.append(
            f"{r['runtime']:<17}{r['precision']:<6}{rng:>24}{r['median_step_tok_s']:>7.1f}{''.join(vs)}"
            f"{r['prefill_ms']:>11.1f}{r['load_ms']:>8.0f}{r['peak_rss_bytes'] / 2**20:>8.0f}"
            f"{r['file_bytes'] / 2**20:>9.1f}{r['kv_bytes_per_token']:>9}{match:>5}"
        )
    lines.append("vs genai: ratio of medians; paired / step pr: median over rounds of the ratio to genai's run in the "
                 "same round (decode wall / median inter-token step)")
    lines.append("=HF: greedy tokens equal transformers' (else: how many leading tokens agree); "
                 "quantized variants are expected to drift on random weights")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
