"""Release-side steps of `fleetgen model import` that make a fast graph: read what a graph holds,
build a fused graph from a Hugging Face checkpoint with onnxruntime-genai's model builder, and
apply ONNX Runtime's transformers-optimizer fusions to an Optimum export.

    kind = source_kind(folder)                 # "optimum" | "genai" | "hf-checkpoint"
    check_hf_checkpoint(folder)                # refuses an architecture the path cannot convert
    run_builder(folder, out, "int4")           # python -m onnxruntime_genai.models.builder ...
    info = describe_graph(out / "model.onnx")  # fused ops, quantization, unknown custom ops
    fuse_optimum(src, dst, config)             # ORT's optimizer; IO names must stay the same

None of this runs on a device: the builder needs onnxruntime-genai, transformers and torch
(release tooling), the optimizer and graph inspection need onnx. The agent only reads the
result (`manifest.graph`, agent/runtime/genai.py, agent/runtime/gqa.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agent.errors import FleetgenError
from agent.manifest import Quantization

log = logging.getLogger(__name__)

SourceKind = Literal["optimum", "genai", "hf-checkpoint"]

# Hugging Face architectures the builder turns into one decoder graph the runtime drives
# (GroupQueryAttention, decoder-only). The builder knows more (vision, audio, MoE, pipelines):
# those need graphs or inputs this runtime does not feed.
BUILDER_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Phi3ForCausalLM",
    "GraniteForCausalLM",
    "OlmoForCausalLM",
    "SmolLM3ForCausalLM",
)
BUILDER_PRECISIONS = ("fp32", "int8", "int4")
# operator domains ONNX Runtime's CPU provider runs: the standard ones and its contrib ops
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
# what counts as "fused" when recorded in the manifest
FUSED_OPS = (
    "GroupQueryAttention",
    "MultiHeadAttention",
    "Attention",
    "RotaryEmbedding",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "FastGelu",
    "BiasGelu",
    "Gelu",
    "MatMulNBits",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QuickGelu",
)
BUILDER_PYTHON_ENV = "FLEETGEN_BUILDER_PYTHON"


class ModelImportError(FleetgenError):
    """The source cannot be turned into a fleetgen model; the message says why and what works."""

    exit_code = 2


@dataclass(frozen=True)
class GraphFacts:
    ops: dict[str, int]  # op type -> count (domain-qualified when not a standard domain)
    fusions: list[str]
    quantization: Quantization
    quantization_detail: str
    unknown_ops: list[str] = field(default_factory=list)


def source_kind(folder: Path) -> SourceKind:
    """What kind of folder `model import` was given; refuses anything else, saying what works."""
    if (folder / "manifest.json").exists():
        raise ModelImportError(f"{folder} is already a fleetgen model folder (manifest.json)")
    if (folder / "genai_config.json").is_file():
        return "genai"
    if (folder / "model.onnx").is_file() and (folder / "config.json").is_file():
        return "optimum"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return "hf-checkpoint"
    if (folder / "config.json").is_file() and any(folder.glob("*.bin")):
        raise ModelImportError(f"{folder}: pytorch_model.bin checkpoints are not supported; save with safetensors "
                           "(model.save_pretrained(..., safe_serialization=True))")
    raise ModelImportError(
        f"{folder} is not an Optimum ONNX export (model.onnx + config.json), an onnxruntime-genai model "
        "folder (genai_config.json + model.onnx) or a Hugging Face checkpoint (config.json + *.safetensors)"
    )


def check_hf_checkpoint(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelImportError(f"{folder / 'config.json'}: not readable JSON ({e})") from None
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in BUILDER_ARCHITECTURES:
        raise ModelImportError(
            f"{folder}: architecture {arch or '(none in config.json)'} is not supported by the checkpoint path; "
            f"supported: {', '.join(BUILDER_ARCHITECTURES)} (or export with optimum-cli and import the export)"
        )
    if not (folder / "tokenizer.json").is_file():
        raise ModelImportError(f"{folder}: no tokenizer.json (the runtime needs a fast tokenizer file)")
    return dict(config)


def builder_python() -> str:
    return os.environ.get(BUILDER_PYTHON_ENV) or sys.executable


def run_builder(src: Path, out: Path, precision: str, python: str | None = None,
                block_size: int | None = None, accuracy_level: int | None = None) -> list[str]:
    """onnxruntime-genai's builder, CPU target; returns the command it ran (for the manifest)."""
    if precision not in BUILDER_PRECISIONS:
        raise ModelImportError(f"precision {precision!r}: the builder path supports {', '.join(BUILDER_PRECISIONS)}")
    python = python or builder_python()
    try:
        probe = subprocess.run([python, "-c", "import onnxruntime_genai.models.builder"], capture_output=True,
                               text=True, timeout=600)
        missing = probe.returncode != 0
        why = (probe.stderr.strip().splitlines() or ["?"])[-1][:200]
    except (OSError, subprocess.TimeoutExpired) as e:
        missing, why = True, str(e)[:200]
    if missing:
        raise ModelImportError(
            f"the checkpoint path needs onnxruntime-genai's model builder, which {python} cannot import "
            f"({why}). Install it on the release machine "
            f"(pip install onnxruntime-genai transformers torch==2.13.0, or the `bench` extra) or point "
            f"{BUILDER_PYTHON_ENV} / --builder-python at a Python that has it"
        )
    cache = out.parent / (out.name + ".builder-cache")
    cmd = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out), "-p", precision,
           "-e", "cpu", "-c", str(cache)]
    extra = []
    if block_size is not None:
        extra.append(f"block_size={block_size}")
    if accuracy_level is not None:
        extra.append(f"accuracy_level={accuracy_level}")
    if extra:
        cmd += ["--extra_options", *extra]
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=4 * 3600)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0 or not (out / "genai_config.json").is_file():
        tail = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()][-3:]
        raise ModelImportError(f"onnxruntime-genai's builder could not convert {src} ({precision}): "
                           + (" | ".join(tail)[:600] or f"exit {proc.returncode}"))
    return cmd


def describe_graph(path: Path) -> GraphFacts:
    """Ops, fused ops and weight quantization of a graph (external data not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # DecodeError, OSError
        raise ModelImportError(f"cannot read {path}: {str(e).splitlines()[0][:200]}") from None
    counts: Counter[str] = Counter()
    unknown: list[str] = []
    bits: set[int] = set()
    blocks: set[int] = set()
    levels: set[int] = set()
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in KNOWN_DOMAINS:
            name = f"{domain}.{node.op_type}"
            if name not in unknown:
                unknown.append(name)
            counts[name] += 1
            continue
        counts[node.op_type] += 1
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            bits.add(int(attrs.get("bits", 4)))
            blocks.add(int(attrs.get("block_size", 0)))
            levels.add(int(attrs.get("accuracy_level", 0)))
    fusions = [op for op in FUSED_OPS if counts.get(op)]
    quantization: Quantization = "fp32"
    detail = "float32 weights"
    if bits:
        quantization = "int8" if bits == {8} else "int4"
        def joined(xs: set[int]) -> str:
            return "/".join(str(x) for x in sorted(xs))

        detail = (f"weight-only MatMulNBits, {joined(bits)}-bit, block {joined(blocks)}, "
                  f"accuracy level {joined(levels)} (4 = int8 compute)")
    elif counts.keys() & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "DynamicQuantizeLinear"}:
        quantization, detail = "int8", "dynamic int8 (weights int8, activations quantized at run time)"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        quantization, detail = "fp16", "float16 weights"
    return GraphFacts(dict(counts), fusions, quantization, detail, unknown)


def refuse_unknown_ops(facts: GraphFacts, path: Path) -> None:
    if facts.unknown_ops:
        raise ModelImportError(
            f"{path}: graph uses custom operator(s) {', '.join(facts.unknown_ops[:5])} that ONNX Runtime's CPU "
            f"provider does not run; supported: standard ONNX operators and onnxruntime's com.microsoft contrib "
            f"operators (e.g. GroupQueryAttention, MatMulNBits, SimplifiedLayerNormalization)"
        )


# model_type in config.json -> ORT transformers-optimizer model type; anything else gets the
# generic fusions of "gpt2" (LayerNorm/SkipLayerNorm/Gelu), attention fusion off (it would
# change the graph's past/present inputs)
OPTIMIZER_TYPES = {"gpt2": "gpt2", "gpt_neox": "gpt_neox", "phi": "phi", "qwen3": "qwen3"}


def fuse_optimum(src: Path, dst: Path, config: dict[str, Any]) -> list[str]:
    """ORT's transformers optimizer on an Optimum export, keeping its inputs and outputs.

    Returns the fused op types the result gained; raises ModelImportError when the optimizer
    fails or changes the graph's interface (the caller then keeps the unfused graph).
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = OPTIMIZER_TYPES.get(str(config.get("model_type", "")), "gpt2")
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    options = FusionOptions(model_type)
    options.enable_attention = False
    options.enable_rotary_embeddings = False
    before = describe_graph(src)
    try:
        optimized = optimize_model(str(src), model_type=model_type, num_heads=heads, hidden_size=hidden,
                                   optimization_options=options, opt_level=0)
    except Exception as e:  # the optimizer raises whatever its fusions hit
        raise ModelImportError(f"ORT's optimizer failed on {src}: {str(e).splitlines()[0][:200]}") from None
    model = optimized.model
    # The fused ops live in com.microsoft; the optimizer does not always declare the domain, and
    # then the quantizers' shape inference refuses the graph ("No opset import for domain").
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    original = onnx.load(str(src), load_external_data=False)

    def io(m: onnx.ModelProto) -> tuple[list[str], list[str]]:
        return [i.name for i in m.graph.input], [o.name for o in m.graph.output]

    if io(model) != io(original):
        raise ModelImportError("ORT's optimizer changed the graph's inputs/outputs; kept the unfused graph")
    dst.parent.mkdir(parents=True, exist_ok=True)
    from models.quantize import EXTERNAL_DATA_MIN_BYTES, EXTERNAL_DATA_SUFFIX

    large = sum(f.stat().st_size for f in src.parent.glob(src.name + "*")) >= EXTERNAL_DATA_MIN_BYTES
    onnx.save(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
              location=dst.name + EXTERNAL_DATA_SUFFIX)
    after = describe_graph(dst)
    return [op for op in after.fusions if after.ops.get(op, 0) > before.ops.get(op, 0)]
