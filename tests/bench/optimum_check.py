"""Real `optimum-cli` exports of Llama, Qwen2 and GPT-2 through fleetgen, against transformers.

    .venv/bin/python tests/bench/optimum_check.py                  # all three: fp32, fused, int8, int4
    .venv/bin/python tests/bench/optimum_check.py --archs gpt2     # one architecture
    .venv/bin/python tests/bench/optimum_check.py --setup          # create/refresh the venv, exit

Optimum's exporter (optimum-onnx) needs transformers < 4.58 while onnxruntime-genai's builder
(tests/bench/peers.py, `.venv-bench`) needs transformers >= 5, so this check has a virtualenv
of its own, `.venv-optimum` at the repository root (FLEETGEN_OPTIMUM_VENV overrides), made on
first use: torch 2.13.0 CPU, optimum-onnx with onnxruntime, transformers as optimum-onnx
accepts. Nothing of it reaches the agent, the tests or `.venv`.

For each architecture (small seeded random checkpoints: Llama and Qwen2 with GQA 8/2 heads,
GPT-2; 4 layers, hidden 256; Qwen2 has its q/k/v biases):
1. transformers builds the checkpoint (init range INIT_RANGE as in peers.py, so greedy choices
   are decisive; biases and norm weights perturbed too, so they are exercised) with the
   project's byte-level BPE tokenizer (models/gpt2_onnx.build_tokenizer);
2. the real `optimum-cli export onnx --task text-generation-with-past` exports it;
3. `fleetgen model import` makes fp32, fp32 `--fuse`, int8 and int4 (`--quantize`) folders;
4. each folder generates greedily (N new tokens, EOS ignored, repetition penalty off) through
   the runtime API the CLI uses (token ids) and through `fleetgen-agent generate --json`
   (text), in fleetgen's own `.venv`;
5. transformers' greedy `generate` on the same prompt ids is the reference.
fp32 (plain, fused, and the export run as it is) must equal the reference token for token;
int8 / int4 are reported, not required: the share of positions equal in free generation (one
flipped choice parts the sequences for good) and the teacher-forced top-1 agreement.

Prints a table and writes tests/bench/results/optimum_check.json; exits 1 if any fp32
comparison fails or a step fails, 2 if the virtualenvs lack something (one line saying what).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "bench" / "results"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleetgen" / "bench" / "optimum"
OPTIMUM_VENV = Path(os.environ.get("FLEETGEN_OPTIMUM_VENV", REPO / ".venv-optimum"))
# optimum-onnx 0.1.0 (the release that provides `optimum-cli export onnx` for optimum 2.x)
# pins optimum ~= 2.1 and transformers >= 4.36, < 4.58; onnxruntime as the agent runs it
OPTIMUM_PACKAGES = ["torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "transformers>=4.36,<4.58", "onnx",
                    "onnxruntime==1.32.0", "safetensors"]
VERSIONS_OF = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")
THREADS = 1  # tiny models; the machine is shared
SEED = 0
NEW_TOKENS = 32
PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
VOCAB = 2048  # build_tokenizer's size: every id the model can pick decodes to text
CONTEXT = 256
# same reason as peers.py: HF's default init (0.02) gives near-uniform logits and greedy picks
# that hinge on rounding; a wider one makes them decisive
INIT_RANGE = 0.1
# HF initializes biases to 0 and norm weights to 1: perturbed, so a dropped bias or norm weight
# in an export or import changes the tokens
PERTURB_1D = 0.1
COMMON: dict[str, Any] = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0, "initializer_range": INIT_RANGE}
# tied embeddings as the real models have them (GPT-2, Qwen2-0.5B tie; Llama does not): a tied LM
# head is one initializer read by a Gather and a MatMul, which export and quantization must keep apart
ARCHS: dict[str, dict[str, Any]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
        "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, **COMMON,
    },
    "qwen2": {  # Qwen2's attention has biases on q/k/v (not on o): Qwen2Config has no switch for it
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
        "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
        "use_sliding_window": False, "tie_word_embeddings": True, **COMMON,
    },
    "gpt2": {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 256, "n_layer": 4, "n_head": 8,
        "n_positions": CONTEXT, "n_ctx": CONTEXT, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True, **COMMON,
    },
}
# fleetgen model import variants: name -> extra arguments; "fp32*" must equal transformers
VARIANTS: dict[str, list[str]] = {"fp32": [], "fp32-fused": ["--fuse"], "int8": ["--quantize", "int8"],
                                  "int4": ["--quantize", "int4"]}


class CheckError(Exception):
    """A step failed; the message is one line for the table and the JSON."""


class SetupError(Exception):
    """A virtualenv lacks something; the message says what and how to fix it."""


# ---------------------------------------------------------------- workers (one process each)


def build_hf(arch: str, out: Path) -> dict[str, Any]:
    """The seeded checkpoint (safetensors) + tokenizer files transformers and fleetgen both read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.gpt2_onnx import EOS_TOKEN, build_tokenizer

    torch.manual_seed(SEED)
    spec = {k: v for k, v in ARCHS[arch].items() if k not in ("architectures", "model_type")}
    config = AutoConfig.for_model(ARCHS[arch]["model_type"], **spec)
    config.architectures = ARCHS[arch]["architectures"]
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * PERTURB_1D)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tok = build_tokenizer(VOCAB)
    tok.save(str(out / "tokenizer.json"))  # type: ignore[attr-defined]
    if tok.get_vocab_size() != VOCAB:  # type: ignore[attr-defined]
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, the model {VOCAB}")  # type: ignore[attr-defined]
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN, "model_max_length": CONTEXT,
    }, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN}) + "\n")
    return {"params": sum(p.numel() for p in model.parameters())}


def run_transformers(hf: Path, prompt_ids: list[int], new_tokens: int) -> dict[str, Any]:
    """transformers' own greedy search; EOS does not stop it (fleetgen runs with ignore_eos)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             num_beams=1, repetition_penalty=1.0, eos_token_id=None, pad_token_id=0)
    tokens = out[0, len(prompt_ids):].tolist()
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    # as fleetgen's incremental detokenizer emits it: the text the new ids add after the prompt
    text = tok.decode(prompt_ids + tokens)[len(tok.decode(prompt_ids)):]
    return {"tokens": tokens, "text": text}


def run_fleetgen(folder: Path, prompt: str, new_tokens: int, reference: list[int] | None = None) -> dict[str, Any]:
    """The runtime API `fleetgen-agent generate` uses (load_model, request, generate), greedy.

    With `reference`, also the teacher-forced top-1 agreement: the same decoder fed the prompt
    and then the reference tokens, its argmax compared with the next reference token at each
    position. Free generation parts for good at the first flip (random weights have small
    margins); this says how often a quantized graph picks what fp32 would, position by position.
    """
    import numpy as np

    from agent.runtime import EngineOptions, load_model
    from agent.runtime.text import TextGenerator

    gen = load_model(folder, EngineOptions(threads=THREADS))
    if not isinstance(gen, TextGenerator):
        raise SystemExit(f"{folder} is not a text model")
    try:
        req = gen.request(prompt, max_tokens=new_tokens, greedy=True, repetition_penalty=1.0, ignore_eos=True)
        result = gen.generate(req)
        prompt_ids = gen.encode_prompt(prompt)
        doc: dict[str, Any] = {"prompt_ids": prompt_ids, "tokens": list(result.token_ids), "text": result.text,
                               "finish_reason": result.finish_reason}
        if reference:
            gen.decoder.reset(len(prompt_ids) + len(reference))
            logits = gen.decoder.forward(prompt_ids)
            hits = 0
            for i, want in enumerate(reference):
                hits += int(np.argmax(np.asarray(logits).ravel())) == want
                if i + 1 < len(reference):
                    logits = gen.decoder.forward([want])
            doc["forced_agreement"] = hits / len(reference)
        return doc
    finally:
        gen.close()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONS_OF:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def worker(argv: list[str]) -> None:
    mode, rest = argv[0], argv[1:]
    result: dict[str, Any]
    if mode == "build-hf":
        result = build_hf(rest[0], Path(rest[1]))
    elif mode == "transformers":
        result = run_transformers(Path(rest[0]), json.loads(rest[1]), int(rest[2]))
    elif mode == "fleetgen":
        result = run_fleetgen(Path(rest[0]), rest[1], int(rest[2]), json.loads(rest[3]) if len(rest) > 3 else None)
    elif mode == "versions":
        result = versions()
    else:
        raise SystemExit(f"unknown worker mode {mode}")
    print(json.dumps(result))


# ---------------------------------------------------------------- orchestration


def optimum_python() -> Path:
    return OPTIMUM_VENV / "bin" / "python"


def tail(text: str, lines: int = 2) -> str:
    """The last non-empty lines of a tool's output, as one line (no tracebacks in the table)."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])[:400] or "(no output)"


def setup_venv() -> None:
    if not optimum_python().is_file():
        print(f"creating {OPTIMUM_VENV} (torch 2.13.0 CPU, optimum-onnx, transformers < 4.58; a few minutes) ...",
              file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "venv", str(OPTIMUM_VENV)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SetupError(f"could not create the virtualenv {OPTIMUM_VENV}: {tail(proc.stderr)}")
    proc = subprocess.run([str(optimum_python()), "-m", "pip", "install", "--quiet", *OPTIMUM_PACKAGES],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or [tail(proc.stderr)]
        raise SetupError(f"pip could not install {' '.join(OPTIMUM_PACKAGES)} into {OPTIMUM_VENV}: {errors[0][:300]}")


def check_venvs() -> None:
    """Every piece each side needs, before any work: one line naming what is missing."""
    probe = "import torch, transformers, optimum.exporters.onnx, onnx, onnxruntime, tokenizers, safetensors"
    proc = subprocess.run([str(optimum_python()), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"{OPTIMUM_VENV} lacks a package ({tail(proc.stderr, 1)}); "
                         f"run `{Path(sys.executable)} {Path(__file__).relative_to(REPO)} --setup`")
    if not (OPTIMUM_VENV / "bin" / "optimum-cli").is_file():
        raise SetupError(f"{OPTIMUM_VENV}/bin/optimum-cli is missing; run this script with --setup")
    for tool in ("fleetgen", "fleetgen-agent"):
        if not (Path(sys.executable).parent / tool).is_file():
            raise SetupError(f"{Path(sys.executable).parent / tool} is missing: run this script with fleetgen's "
                             f"own virtualenv (`make venv`, then .venv/bin/python {Path(__file__).relative_to(REPO)})")
    proc = subprocess.run([sys.executable, "-c", "import onnx, onnx_ir, onnxruntime, agent.runtime"],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SetupError(f"{sys.executable} cannot run `fleetgen model import` ({tail(proc.stderr, 1)}); "
                         "install the release extra: pip install -e '.[release]'")


def env() -> dict[str, str]:
    threads = str(THREADS)
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def run_tool(cmd: list[str], what: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckError(f"{what}: no answer in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise CheckError(f"{what} exited {proc.returncode}: {tail(proc.stderr + proc.stdout)}")
    return proc


def call(python: Path, *args: str) -> dict[str, Any]:
    proc = run_tool([str(python), __file__, "--worker", *args], f"worker {args[0]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@dataclass
class VariantResult:
    variant: str
    import_ok: bool = False
    error: str = ""
    fusions: list[str] = field(default_factory=list)
    tool: str = ""
    tokens: list[int] = field(default_factory=list)
    equal: bool = False
    first_mismatch: int | None = None  # None: all NEW_TOKENS agree
    agreement: float = 0.0  # share of positions equal to transformers' (free generation)
    forced_agreement: float = 0.0  # teacher-forced top-1 agreement with transformers' tokens
    cli_text_equal: bool | None = None
    model_bytes: int = 0  # model.onnx and its data files
    seconds: float = 0.0


@dataclass
class ArchResult:
    arch: str
    params: int = 0
    export_ok: bool = False
    export_note: str = ""
    error: str = ""
    prompt_tokens: int = 0
    reference: list[int] = field(default_factory=list)
    as_is_equal: bool | None = None  # the export itself, run by fleetgen without import (`--model DIR`)
    as_is_first_mismatch: int | None = None
    variants: list[VariantResult] = field(default_factory=list)
    seconds: float = 0.0

    def fp32_ok(self, wanted: list[str]) -> bool:
        """Exported, and every fp32 variant asked for (and the export run as it is) equals the reference."""
        fp32 = [v for v in self.variants if v.variant.startswith("fp32")]
        return (self.export_ok and not self.error and bool(self.as_is_equal)
                and len(fp32) == sum(1 for w in wanted if w.startswith("fp32")) and all(v.equal for v in fp32))


def compare(tokens: list[int], reference: list[int]) -> tuple[bool, int | None, float]:
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), None)
    if first is None and len(tokens) != len(reference):
        first = min(len(tokens), len(reference))
    same = sum(1 for a, b in zip(tokens, reference, strict=False) if a == b)
    return first is None, first, same / max(len(reference), 1)


def export(hf: Path, out: Path) -> str:
    """The real exporter; returns its validation note (optimum compares ONNX with PyTorch)."""
    cmd = [str(OPTIMUM_VENV / "bin" / "optimum-cli"), "export", "onnx", "--model", str(hf), "--task",
           "text-generation-with-past", str(out)]
    proc = run_tool(cmd, "optimum-cli export onnx", timeout=1800)
    if not (out / "model.onnx").is_file():
        raise CheckError(f"optimum-cli wrote no model.onnx into {out}: {tail(proc.stderr + proc.stdout)}")
    # optimum checks the ONNX outputs against PyTorch's and only warns past its tolerance: kept
    # as a note (fp32 rounding on these widened weights is ~1e-5; the token comparison decides)
    diffs = [float(m.group(1)) for m in re.finditer(r"max diff: ([0-9.eE+-]+)", proc.stderr + proc.stdout)]
    atol = re.search(r"atol: ([0-9.eE+-]+)", proc.stderr + proc.stdout)
    if not diffs:
        return ""
    return f"{len(diffs)} output(s) past atol {atol.group(1) if atol else '?'}, max diff {max(diffs):.2g} (warning)"


def check_variant(base: Path, export_dir: Path, variant: str, args: list[str], reference: list[int],
                  reference_text: str, new_tokens: int) -> VariantResult:
    t0 = time.perf_counter()
    res = VariantResult(variant)
    folder = base / f"fleetgen-{variant}"
    bin_dir = Path(sys.executable).parent
    try:
        run_tool([str(bin_dir / "fleetgen"), "model", "import", str(export_dir), "-o", str(folder), "--name",
                  f"{base.name}-{variant}", *args], f"fleetgen model import {' '.join(args)}".strip())
        res.import_ok = True
        graph = json.loads((folder / "manifest.json").read_text()).get("graph") or {}
        res.fusions, res.tool = list(graph.get("fusions") or []), str(graph.get("tool") or "")
        res.model_bytes = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
        got = call(Path(sys.executable), "fleetgen", str(folder), PROMPT, str(new_tokens), json.dumps(reference))
        res.tokens, res.forced_agreement = got["tokens"], float(got["forced_agreement"])
        res.equal, res.first_mismatch, res.agreement = compare(res.tokens, reference)
        cli = run_tool([str(bin_dir / "fleetgen-agent"), "generate", "--model", str(folder), "--greedy",
                        "--max-tokens", str(new_tokens), "--ignore-eos", "--repetition-penalty", "1",
                        "--threads", str(THREADS), "--json", PROMPT], "fleetgen-agent generate")
        cli_text = json.loads(cli.stdout.strip().splitlines()[-1])["text"]
        res.cli_text_equal = cli_text == reference_text
    except CheckError as e:
        res.error = str(e)
    res.seconds = time.perf_counter() - t0
    return res


def check_arch(arch: str, work: Path, new_tokens: int, variants: list[str]) -> ArchResult:
    t0 = time.perf_counter()
    res = ArchResult(arch)
    base = work / arch
    shutil.rmtree(base, ignore_errors=True)  # every run exports afresh: the export is under test
    hf, export_dir = base / "hf", base / "optimum-export"
    py = optimum_python()
    try:
        print(f"{arch}: building the seeded checkpoint ...", file=sys.stderr, flush=True)
        res.params = int(call(py, "build-hf", arch, str(hf))["params"])
        print(f"{arch}: optimum-cli export onnx ...", file=sys.stderr, flush=True)
        res.export_note = export(hf, export_dir)
        res.export_ok = True
        # transformers gets the ids fleetgen's tokenizer gives the prompt (one tokenization)
        as_is = call(Path(sys.executable), "fleetgen", str(export_dir), PROMPT, str(new_tokens))
        prompt_ids = as_is["prompt_ids"]
        res.prompt_tokens = len(prompt_ids)
        print(f"{arch}: transformers greedy reference ...", file=sys.stderr, flush=True)
        ref = call(py, "transformers", str(hf), json.dumps(prompt_ids), str(new_tokens))
        res.reference = ref["tokens"]
        res.as_is_equal, res.as_is_first_mismatch, _ = compare(as_is["tokens"], res.reference)
        for v in variants:
            print(f"{arch}: fleetgen {v} ...", file=sys.stderr, flush=True)
            res.variants.append(check_variant(base, export_dir, v, VARIANTS[v], res.reference, ref["text"],
                                              new_tokens))
    except CheckError as e:
        res.error = str(e)
    res.seconds = time.perf_counter() - t0
    return res


def yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


SHORT_OPS = {"SkipLayerNormalization": "SkipLN", "SkipSimplifiedLayerNormalization": "SkipSLN",
             "SimplifiedLayerNormalization": "SLN", "LayerNormalization": "LN"}


def fuse_gain(fp32: VariantResult | None, fused: VariantResult | None) -> str:
    """What `--fuse` added over the plain import, or why nothing shows."""
    if fused is None or not fused.import_ok:
        return "-"
    if not fused.tool:
        return "not applied"
    gained = [SHORT_OPS.get(op, op) for op in fused.fusions if fp32 is None or op not in fp32.fusions]
    return ",".join(gained) or "no new ops"


def equal(v: VariantResult | None) -> str:
    return yes(v.equal if v is not None and v.tokens else None)


def first(v: VariantResult | None) -> str:
    if v is None or not v.tokens:
        return "-"
    return "none" if v.first_mismatch is None else str(v.first_mismatch)


def quantized(v: VariantResult | None, fp32: VariantResult | None) -> str:
    """free / forced agreement, first difference, size against fp32: 27 characters."""
    if v is None or not v.tokens:
        return f"{'-':>10}{'-':>7}{'-':>5}{'-':>5}"
    size = f"{v.model_bytes / fp32.model_bytes:.0%}" if fp32 is not None and fp32.model_bytes else "-"
    return f"{v.agreement:>10.0%}{v.forced_agreement:>7.0%}{first(v):>5}{size:>5}"


def table(results: list[ArchResult], new_tokens: int) -> str:
    quant_head = f"{'free':>10}{'forced':>7}{'1st':>5}{'size':>5}"
    head = (f"{'arch':<7}{'export':>7}{'as-is':>6}{'import':>16}{'fp32=HF':>8}{'1st diff':>9}{'fused=HF':>9}"
            f"{'--fuse added':>18}{quant_head.replace('      free', '  int8 free')}"
            f"{quant_head.replace('      free', '  int4 free')}{'CLI':>5}{'s':>5}")
    lines = [f"{new_tokens} greedy tokens after a {results[0].prompt_tokens if results else 0}-token prompt, "
             f"{THREADS} thread; reference: transformers' generate on the checkpoint optimum exported", head,
             "-" * len(head)]
    for r in results:
        by = {v.variant: v for v in r.variants}
        fp32, fused = by.get("fp32"), by.get("fp32-fused")
        imports = "/".join(yes(v.import_ok) for v in r.variants) or "-"
        texts = [v.cli_text_equal for v in r.variants if v.variant.startswith("fp32") and v.cli_text_equal is not None]
        lines.append(
            f"{r.arch:<7}{yes(r.export_ok):>7}{yes(r.as_is_equal):>6}{imports:>16}{equal(fp32):>8}{first(fp32):>9}"
            f"{equal(fused):>9}{fuse_gain(fp32, fused)[:17]:>18}{quantized(by.get('int8'), fp32)}"
            f"{quantized(by.get('int4'), fp32)}{yes(all(texts) if texts else None):>5}{r.seconds:>5.0f}")
    lines += [
        "as-is: the export itself, run by fleetgen without import, equals transformers; import: fp32 / fp32 --fuse / "
        "int8 / int4;",
        "1st diff, 1st: first position that differs from transformers (none = all equal); free: positions equal in "
        "free generation;",
        "forced: teacher-forced top-1 agreement; size: model files against the fp32 import's; CLI: "
        "`fleetgen-agent generate --json` text of the fp32 folders",
        "equals transformers' decoded text; s: seconds for the architecture (build, export, imports, runs)",
    ]
    for r in results:
        for msg in [r.error, *(f"{v.variant}: {v.error}" for v in r.variants if v.error)]:
            if msg:
                lines.append(f"{r.arch} FAILED {msg}")
        if r.export_note:
            lines.append(f"{r.arch} optimum validation: {r.export_note}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help="create/refresh the optimum virtualenv and exit")
    parser.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated, of {', '.join(ARCHS)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--work", type=Path, default=CACHE, help="where checkpoints, exports and imports go")
    parser.add_argument("--out", type=Path, default=RESULTS / "optimum_check.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    archs, variants = args.archs.split(","), args.variants.split(",")
    unknown = [a for a in archs if a not in ARCHS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"error: unknown {', '.join(unknown)}; architectures: {', '.join(ARCHS)}; variants: "
              f"{', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    try:
        if args.setup or not optimum_python().is_file():
            setup_venv()
            if args.setup:
                return 0
        check_venvs()
        tool_versions = call(optimum_python(), "versions")
    except (SetupError, CheckError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_start = list(os.getloadavg())
    results = [check_arch(a, args.work, args.new_tokens, variants) for a in archs]
    print(table(results, args.new_tokens))
    ok = all(r.fp32_ok(variants) for r in results)
    doc = {
        "schema": 1,
        "ok": ok,
        "new_tokens": args.new_tokens,
        "prompt": PROMPT,
        "threads": THREADS,
        "versions": tool_versions,
        "configs": {a: ARCHS[a] for a in archs},
        "init_range": INIT_RANGE,
        "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()),
        "ts": time.time(),
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
