"""Text generation benchmark: our loop vs a bare ORT loop, fp32 / int8 / int4.

    .venv/bin/python tests/bench/generation.py                 # GPT-2-small shape + shipped model
    .venv/bin/python tests/bench/generation.py --models tiny   # quick check of the harness
    nice -n -10 .venv/bin/python tests/bench/generation.py    # on a shared machine (root)

For each model (the GPT-2-small-shaped random decoder, built on demand into a cache folder;
the shipped text model when models/text/ has one) and each variant (fp32, int8, int4):
2 threads, a 32-token prompt, 128 greedy new tokens (EOS ignored), one run, each
measurement in a fresh subprocess (so peak RSS = VmHWM of that process), alternating
ours/bare per variant. "bare" is the floor for our overhead: the same session options
and the same IO-bound ping-pong cache buffers, `run_with_iobinding` and argmax, nothing
else. Memory bandwidth is measured in the same run (numpy read of a 512 MiB array on 1
and 2 threads, before and after each model; the best figure counts, since other processes
on a shared machine only ever lower it) for the roofline: bytes read per decode step = weights read (initializers,
counting only one row of Gather-only tables) + the KV cache read at the mean context.

Prints a table and writes tests/bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "tests" / "bench" / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetgen" / "bench"
THREADS = 2
# GPT-2's init x 4: greedy tokens then depend on the context (at x 1 a random model repeats
# one token), so the cache check below means something; speed does not depend on values.
INIT_SCALE = 4.0
# bytes per token below this fit in a server CPU's last-level cache: no DRAM roofline
CACHE_RESIDENT_BYTES = 64 * 2**20
CHECK_TOKENS = 32  # greedy tokens compared between our cached loop and full recomputation
PROMPT_TOKENS = 32
NEW_TOKENS = 128
SEED_TEXT = (
    "The old lighthouse keeper climbed the stairs each evening, counting the steps and the "
    "gulls, and wrote in his log what the sea had brought: driftwood, a letter in a bottle, "
    "a storm from the west, and once a small boat with no one in it at all."
)


# ---------------------------------------------------------------- models


def build_variants(kind: str) -> dict[str, Path]:
    """fleetgen folders for fp32/int8/int4 of the benchmark decoder (cached)."""
    from controller.cli import main as controller_main
    from models.gpt2_onnx import SHAPES, build_cached

    base = CACHE / f"gpt2-{kind}"
    src = base / "optimum"
    if not (src / "model.onnx").is_file():
        print(f"building GPT-2-{kind}-shaped decoder into {src} ...", file=sys.stderr)
        shape = SHAPES[kind]
        if shape.n_positions < PROMPT_TOKENS + NEW_TOKENS:  # tiny: make room for the run
            shape = dataclasses.replace(shape, n_positions=PROMPT_TOKENS + NEW_TOKENS)
        build_cached(shape, src, seed=0, init_scale=INIT_SCALE)
    out = {}
    for q in ("fp32", "int8", "int4"):
        folder = base / q
        if not (folder / "manifest.json").is_file():
            print(f"importing {q} into {folder} ...", file=sys.stderr)
            args = [
                "model",
                "import",
                str(src),
                "-o",
                str(folder),
                "--name",
                f"gpt2-{kind}-{q}",
                "--log-level",
                "WARNING",
            ]
            if q != "fp32":
                args += ["--quantize", q]
            if controller_main(args) != 0:
                raise SystemExit(f"import of {q} failed")
        out[q] = folder
    return out


def shipped_variants() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for manifest in sorted((REPO / "models" / "text").glob("*/manifest.json")):
        meta = json.loads(manifest.read_text())
        if meta.get("engine") == "onnxruntime":
            out.setdefault(meta.get("quantization", "fp32"), manifest.parent)
    return out


def weight_bytes_read(model_path: Path) -> tuple[int, int]:
    """(all initializer bytes, bytes one decode step reads: Gather-only tables count one row)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    sizes: dict[str, tuple[int, int]] = {}
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        row = n // init.dims[0] if init.dims else n
        sizes[init.name] = (n * itemsize, row * itemsize)
    users: dict[str, set[str]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in sizes:
                users.setdefault(name, set()).add(node.op_type if node.op_type != "Gather" or i == 0 else "GatherIndex")
    total = sum(s for s, _ in sizes.values())
    read = sum(row if users.get(name) == {"Gather"} else size for name, (size, row) in sizes.items())
    return total, read


# ---------------------------------------------------------------- worker (one measurement)


def vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def prompt_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer.encode(SEED_TEXT * 4)[:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS, len(ids)
    return ids


def run_ours(folder: Path) -> dict[str, Any]:
    from agent.runtime import EngineOptions, TextGenerator, load_model

    gen = load_model(folder, EngineOptions(threads=THREADS))
    assert isinstance(gen, TextGenerator)
    # a text prompt that is exactly 32 tokens: the decoded first 32 ids, checked
    text = gen.tokenizer.decode(prompt_ids(gen.tokenizer))
    if len(gen.encode_prompt(text)) != PROMPT_TOKENS:
        raise SystemExit(f"prompt re-encodes to {len(gen.encode_prompt(text))} tokens")
    req = gen.request(text, max_tokens=NEW_TOKENS, greedy=True, repetition_penalty=1.0, ignore_eos=True)
    chunks: list[str] = []
    result = gen.generate(req, on_text=chunks.append)  # streaming, as the CLI does
    t = result.timings
    assert t.generated_tokens == NEW_TOKENS
    return {
        "load_ms": gen.load_ms,
        "prefill_ms": t.prefill_ms,
        "decode_tok_s": t.decode_tokens_per_s,
        "median_step_tok_s": 1000 / float(np.median(result.step_ms)),
        "tokens": list(result.token_ids),
        "kv_bytes_per_token": gen.layout.kv_bytes_per_token,
    }


def run_bare(folder: Path) -> dict[str, Any]:
    """session.run_with_iobinding + argmax, same cache handling, nothing else."""
    import onnxruntime as ort

    from agent.manifest import load_manifest
    from agent.runtime.engine import EngineOptions
    from agent.runtime.engines.onnx import session_options
    from agent.runtime.text import Tokenizer

    manifest = load_manifest(folder)
    spec = manifest.text
    assert spec is not None and manifest.tokenizer is not None
    ids = prompt_ids(Tokenizer(folder / manifest.tokenizer))
    t0 = time.perf_counter()
    sess = ort.InferenceSession(
        str(folder / manifest.model),
        session_options(EngineOptions(threads=THREADS)),
        providers=["CPUExecutionProvider"],
    )
    load_ms = (time.perf_counter() - t0) * 1000
    names = {i.name for i in sess.get_inputs()}
    layers, heads, dim, vocab = (spec.num_layers, spec.num_kv_heads or spec.num_heads, spec.head_dim, spec.vocab_size)
    cap = PROMPT_TOKENS + NEW_TOKENS
    bufs = [[np.empty(heads * cap * dim, np.float32) for _ in range(2 * layers)] for _ in range(2)]
    ptrs = [[b.ctypes.data for b in side] for side in bufs]
    mask = np.ones((1, cap), np.int64)
    pos = np.arange(cap, dtype=np.int64)[None, :]
    step_ids = np.zeros((1, 1), np.int64)
    step_logits = np.empty((1, 1, vocab), np.float32)
    prefill_logits = np.empty((1, PROMPT_TOKENS, vocab), np.float32)
    prompt = np.array([ids], np.int64)
    io = sess.io_binding()
    # the same binding calls as our decoder (pybind methods, device built once)
    from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

    bind_in, bind_out = io._iobinding.bind_input, io._iobinding.bind_output
    dev = OrtDevice.make("cpu", 0)._get_c_device()
    kv_names = [(f"past_key_values.{i}.{k}", f"present.{i}.{k}") for i in range(layers) for k in ("key", "value")]

    def step(x: np.ndarray, logits: np.ndarray, past: int, src: list[int], dst: list[int]) -> None:
        n, total = x.shape[1], past + x.shape[1]
        bind_in("input_ids", dev, np.int64, [1, n], x.ctypes.data)
        bind_in("attention_mask", dev, np.int64, [1, total], mask.ctypes.data)
        if "position_ids" in names:
            bind_in("position_ids", dev, np.int64, [1, n], pos.ctypes.data + 8 * past)
        bind_out("logits", dev, np.float32, list(logits.shape), logits.ctypes.data)
        for j, (pin, pout) in enumerate(kv_names):
            bind_in(pin, dev, np.float32, [1, heads, past, dim], src[j])
            bind_out(pout, dev, np.float32, [1, heads, total, dim], dst[j])
        sess.run_with_iobinding(io)

    # warm-up, as load_model does
    step_ids[0, 0] = ids[0]
    step(step_ids, step_logits, 0, ptrs[0], ptrs[1])
    t0 = time.perf_counter()
    step(prompt, prefill_logits, 0, ptrs[0], ptrs[1])
    token = int(np.argmax(prefill_logits[0, -1]))
    t1 = time.perf_counter()
    tokens = [token]
    token_at = [t1]
    past, side = PROMPT_TOKENS, 1
    for _ in range(NEW_TOKENS - 1):
        step_ids[0, 0] = token
        step(step_ids, step_logits, past, ptrs[side], ptrs[1 - side])
        token = int(np.argmax(step_logits[0, -1]))
        token_at.append(time.perf_counter())
        tokens.append(token)
        past, side = past + 1, 1 - side
    t2 = time.perf_counter()
    step_ms = np.diff(token_at) * 1000
    return {
        "load_ms": load_ms,
        "prefill_ms": (t1 - t0) * 1000,
        "decode_tok_s": (NEW_TOKENS - 1) / (t2 - t1),
        "median_step_tok_s": 1000 / float(np.median(step_ms)),
        "tokens": tokens,
    }


def run_recompute(folder: Path) -> dict[str, Any]:
    """Greedy tokens by recomputing the whole sequence each step (no cache)."""
    from agent.runtime import EngineOptions, TextGenerator, load_model
    from tests.runtime.reference import greedy_no_cache

    gen = load_model(folder, EngineOptions(threads=THREADS))
    assert isinstance(gen, TextGenerator)
    return {"tokens": greedy_no_cache(gen, prompt_ids(gen.tokenizer), CHECK_TOKENS)}


def worker(mode: str, folder: Path) -> None:
    runners = {"ours": run_ours, "bare": run_bare, "recompute": run_recompute}
    result = runners[mode](folder)
    result["peak_rss_bytes"] = vm_hwm_bytes()  # recompute: not reported
    print(json.dumps(result))


def measure(mode: str, folder: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", mode, str(folder)], capture_output=True, text=True, env=env, timeout=1200
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} on {folder} failed:\n{proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- bandwidth


def read_bandwidth(threads: int, size: int = 512 * 2**20, repeats: int = 20,
                   reduce: Any = np.sum, dtype: Any = np.float64) -> float:
    """Bytes/s of reducing (`reduce`, default a float64 sum) a large array split over `threads`
    threads (numpy releases the GIL in reductions). Best of `repeats`."""
    parts = np.array_split(np.ones(size // np.dtype(dtype).itemsize, dtype), threads)
    best = 0.0
    for _ in range(repeats):
        ts = [threading.Thread(target=reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, size / (time.perf_counter() - t0))
    return best


# ---------------------------------------------------------------- main


def bench_model(label: str, variants: dict[str, Path], rounds: int) -> list[dict[str, Any]]:
    """Per round: fp32 ours, fp32 bare, int8 ours, int8 bare, int4 ours, int4 bare (each a
    fresh process). With several rounds, each figure is the median over rounds."""
    from agent.manifest import load_manifest

    rows: dict[str, dict[str, Any]] = {}
    for q in ("fp32", "int8", "int4"):
        folder = variants.get(q)
        if folder is None:
            continue
        manifest = load_manifest(folder)
        total, read = weight_bytes_read(folder / manifest.model)
        file_bytes = sum(f.length for f in manifest.files if f.path.startswith("model.onnx"))
        rows[q] = {
            "model": label,
            "variant": q,
            "path": str(folder),
            "file_bytes": file_bytes,
            "weight_bytes": total,
            "weight_bytes_read_per_token": read,
            "runs": {"ours": [], "bare": []},
        }
    for r in range(rounds):
        for q, row in rows.items():
            for mode in ("ours", "bare"):
                print(f"  round {r + 1}/{rounds} {label} {q} {mode} ...", file=sys.stderr, flush=True)
                row["runs"][mode].append(measure(mode, Path(row["path"])))
    for row in rows.values():
        for mode in ("ours", "bare"):
            runs = row["runs"][mode]
            row[mode] = {
                k: float(np.median([x[k] for x in runs]))
                for k in ("load_ms", "prefill_ms", "decode_tok_s", "median_step_tok_s")
            }
            row[mode]["peak_rss_bytes"] = max(x["peak_rss_bytes"] for x in runs)
            if mode == "ours":
                row[mode]["kv_bytes_per_token"] = runs[0]["kv_bytes_per_token"]
        if row["variant"] in ("fp32", "int4"):  # exact by construction (ADR 0012), not int8
            print(f"  {label} {row['variant']} recompute check ...", file=sys.stderr, flush=True)
            ref = measure("recompute", Path(row["path"]))["tokens"]
            row["kv_cache_equals_recompute"] = row["runs"]["ours"][0]["tokens"][:CHECK_TOKENS] == ref
        row["same_tokens"] = all(
            o["tokens"] == b["tokens"] for o, b in zip(row["runs"]["ours"], row["runs"]["bare"], strict=True)
        )
        for runs in row["runs"].values():
            for x in runs:
                x.pop("tokens")
    return list(rows.values())


# Decode speed metrics: "wall" = (tokens - 1) / decode time, as a user sees it; "step" =
# 1 / median time between consecutive tokens, which bursts of other processes on a shared
# machine barely move. Targets are reported on both.
METRICS = {"step": "median_step_tok_s", "wall": "decode_tok_s"}


def summarize(rows: list[dict[str, Any]], bandwidth: float) -> None:
    by = {(r["model"], r["variant"]): r for r in rows}
    for r in rows:
        kv_tok = r["ours"]["kv_bytes_per_token"]
        mean_ctx = PROMPT_TOKENS + NEW_TOKENS / 2
        bytes_per_token = r["weight_bytes_read_per_token"] + kv_tok * mean_ctx
        r["bytes_per_token"] = bytes_per_token
        r["roofline_tok_s"] = bandwidth / bytes_per_token
        # two ping-pong buffers, touched up to prompt + new tokens
        kv_resident = 2 * kv_tok * (PROMPT_TOKENS + NEW_TOKENS)
        r["rss_budget_bytes"] = r["file_bytes"] + kv_resident + 150 * 2**20
        r["rss_within_budget"] = r["ours"]["peak_rss_bytes"] <= r["rss_budget_bytes"]
        fp32, int8 = by.get((r["model"], "fp32")), by.get((r["model"], "int8"))
        for name, key in METRICS.items():
            r[f"roofline_fraction_{name}"] = r["ours"][key] / r["roofline_tok_s"]
            # per round, ours over the bare run right after it (same machine weather), median
            pairs = zip(r["runs"]["ours"], r["runs"]["bare"], strict=True)
            r[f"ours_vs_bare_{name}"] = float(np.median([o[key] / b[key] for o, b in pairs]))
            if r["variant"] == "int8" and fp32:
                r[f"speedup_vs_fp32_{name}"] = r["ours"][key] / fp32["ours"][key]
            if r["variant"] == "int4" and int8:
                r[f"speedup_vs_int8_{name}"] = r["ours"][key] / int8["ours"][key]


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<12}{'var':<5}{'ours step':>10}{'bare step':>10}{'ratio':>7}"
        f"{'ours wall':>10}{'bare wall':>10}{'ratio':>7}"
        f"{'prefill ms':>11}{'bare pf':>8}{'load ms':>8}{'roofline':>9}"
        f"{'RSS MiB':>8}{'budget':>7}{'file MiB':>9}{'kv=rc':>6}"
    )
    lines = ["decode tok/s: 'step' = 1 / median inter-token time, 'wall' = tokens / decode time", head, "-" * len(head)]
    for r in rows:
        o, b = r["ours"], r["bare"]
        lines.append(
            f"{r['model']:<12}{r['variant']:<5}"
            f"{o['median_step_tok_s']:>10.1f}{b['median_step_tok_s']:>10.1f}{r['ours_vs_bare_step']:>7.2f}"
            f"{o['decode_tok_s']:>10.1f}{b['decode_tok_s']:>10.1f}{r['ours_vs_bare_wall']:>7.2f}"
            f"{o['prefill_ms']:>11.1f}{b['prefill_ms']:>8.1f}{o['load_ms']:>8.0f}"
            f"{r['roofline_fraction_step']:>9.0%}"
            f"{o['peak_rss_bytes'] / 2**20:>8.0f}{r['rss_budget_bytes'] / 2**20:>7.0f}"
            f"{r['file_bytes'] / 2**20:>9.1f}"
            f"{ {True: 'yes', False: 'NO', None: '-'}[r.get('kv_cache_equals_recompute')]:>6}"
        )
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The issue's targets on the GPT-2-small-shaped model, for one speed metric."""
    by = {r["variant"]: r for r in rows if r["model"] == "gpt2-small"}
    if not {"fp32", "int8", "int4"} <= set(by):
        return {}
    m = metric
    return {
        "ours_within_10pct_of_bare": all(r[f"ours_vs_bare_{m}"] >= 0.9 for r in by.values()),
        "int8_ge_2x_fp32": by["int8"][f"speedup_vs_fp32_{m}"] >= 2.0,
        "int4_ge_1.15x_int8": by["int4"][f"speedup_vs_int8_{m}"] >= 1.15,
        "int8_ge_50pct_roofline": by["int8"][f"roofline_fraction_{m}"] >= 0.5,
        "peak_rss_within_budget": all(r["rss_within_budget"] for r in by.values()),
        "greedy_kv_cache_equals_recompute_fp32_int4": all(
            by[q].get("kv_cache_equals_recompute") for q in ("fp32", "int4")
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--models", default="small,shipped", help="comma list of: small, tiny, shipped (default small,shipped)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "generation.json")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; figures are medians (default 1)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return 0
    rows: list[dict[str, Any]] = []
    bw: dict[str, float] = {"1": 0.0, "2": 0.0}

    def sample_bandwidth() -> None:
        for t in bw:
            bw[t] = max(bw[t], read_bandwidth(int(t)))
        print(
            f"memory read bandwidth so far: {bw['1'] / 1e9:.1f} GB/s (1 thread), {bw['2'] / 1e9:.1f} GB/s (2 threads)",
            file=sys.stderr,
        )

    sample_bandwidth()
    for name in args.models.split(","):
        if name == "shipped":
            variants = shipped_variants()
            if not variants:
                print("no shipped text model under models/text; skipped", file=sys.stderr)
                continue
            rows += bench_model("shipped", variants, args.rounds)
        else:
            rows += bench_model(f"gpt2-{name}", build_variants(name), args.rounds)
        sample_bandwidth()
    bandwidth = max(bw.values())
    summarize(rows, bandwidth)
    print(table(rows))
    # a model whose bytes per token fit in the CPU caches is not bound by DRAM bandwidth
    over = [
        f"{r['model']} {r['variant']}"
        for r in rows
        if r["roofline_fraction_step"] > 1 and r["bytes_per_token"] > CACHE_RESIDENT_BYTES
    ]
    if over:
        print(
            f"WARNING: {', '.join(over)} above 100% of the roofline: the bandwidth measured "
            f"({bandwidth / 1e9:.1f} GB/s) is too low (busy machine); roofline figures are inflated"
        )
    checks = {name: targets(rows, name) for name in METRICS}
    for k in checks["step"]:
        print(
            f"target {k}: step {'met' if checks['step'][k] else 'NOT met'}, "
            f"wall {'met' if checks['wall'][k] else 'NOT met'}"
        )
    doc = {
        "schema": 1,
        "rounds": args.rounds,
        "niceness": os.nice(0),
        "ts": time.time(),
        "threads": THREADS,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": NEW_TOKENS,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "read_bandwidth_bytes_s": bw,
        "rows": rows,
        "targets": checks,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
