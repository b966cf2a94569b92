"""`fleetgen model import`: what users have → a fleetgen model folder with a fast graph.

    fleetgen model import ./gpt2-onnx -o ./models/gpt2-int8 --quantize int8   # Optimum export
    fleetgen model import ./gpt2-onnx -o ./models/gpt2-fused --fuse           # + ORT fusions
    fleetgen model import ./SmolLM-135M -o ./models/smollm-int4 --quantize int4  # HF checkpoint
    fleetgen model import ./smollm-genai -o ./models/smollm                   # builder output

Sources (models/fused_import.py tells them apart):
- an Optimum export (`optimum-cli export onnx --task text-generation-with-past`: model.onnx,
  config.json, tokenizer.json, ...): copied, optionally fused with ONNX Runtime's transformers
  optimizer (`--fuse`) and quantized (int8 dynamic, int4 MatMulNBits; models/quantize.py);
- a Hugging Face checkpoint (config.json + *.safetensors + tokenizer.json): converted by
  onnxruntime-genai's model builder (release-side; `--builder-python` or
  FLEETGEN_BUILDER_PYTHON names a Python that has it) into one fused graph
  (GroupQueryAttention, past and present sharing one buffer), fp32 or `--quantize int8|int4`;
- a folder that builder wrote (genai_config.json + model.onnx): taken as it is.
The result holds the model, the tokenizer and configs, and a `manifest.json` listing them
with sizes and hashes, ready for `fleetgen bundle build`; its `graph` section records the
source, the fused operators, how the weights were quantized and the KV layout the runtime
drives. The result is loaded and warmed up before the command returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path

from agent.errors import UsageError
from agent.manifest import ModelManifest, file_entries, write_manifest

SCHEMA = 1
COPIED = ("tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json")
GENAI_COPIED = ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "chat_template.jinja")
MODEL_FILE = "model.onnx"
OVERHEAD_MB = 150  # interpreter, runtime and arenas above weights + KV cache

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("model", parents=[common], help="import and quantize models")
    p.set_defaults(log_level="WARNING")  # one-shot: its output is the answer; INFO lines are noise
    verbs = p.add_subparsers(dest="model_command", metavar="VERB", required=True)
    imp = verbs.add_parser(
        "import",
        parents=[common],
        help="turn an Optimum export, a Hugging Face checkpoint or an onnxruntime-genai folder into a fleetgen model",
    )
    imp.add_argument(
        "source", type=Path, metavar="DIR", help="Optimum export, HF checkpoint (safetensors) or genai folder"
    )
    imp.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="MODEL_DIR",
        help="new fleetgen model folder (must not exist or be empty)",
    )
    imp.add_argument("--quantize", choices=["int8", "int4"], help="quantize the weights")
    imp.add_argument(
        "--fuse", action="store_true", help="Optimum exports: apply ONNX Runtime's transformers-optimizer fusions"
    )
    imp.add_argument(
        "--builder-python",
        metavar="PYTHON",
        help="HF checkpoints: a Python with onnxruntime-genai's model builder (default: $FLEETGEN_BUILDER_PYTHON "
        "or this one)",
    )
    imp.add_argument(
        "--block-size", type=int, choices=[16, 32, 64, 128, 256], help="HF checkpoints: quantization block size"
    )
    imp.add_argument("--name", help="model name (default: from the folder name)")
    imp.add_argument("--version", default="1.0.0", help="model version (default 1.0.0)")
    imp.add_argument("--license", default="", help="license to record in the manifest")
    imp.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    imp.set_defaults(func=run_import)


def _name(source: Path, given: str | None) -> str:
    name = given or re.sub(r"[^a-z0-9._-]+", "-", source.resolve().name.lower()).strip("-._")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name or ""):
        raise UsageError(f"model name {name!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")
    return name


def _prepare_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output {out} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)


def run_import(args: argparse.Namespace) -> int:
    from agent.cli import require_extra

    # Quantization is release tooling (models/quantize.py), installed by the release extra.
    require_extra("model import", "release", "onnx", "onnx_ir")
    from agent.runtime import EngineOptions, TextGenerator, load_model
    from agent.runtime.loader import is_optimum_folder
    from models.fused_import import ModelImportError, source_kind
    from models.quantize import graph_quantization, model_files

    source: Path = args.source
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    try:
        kind = source_kind(source)
    except ModelImportError as e:
        raise UsageError(str(e)) from None
    name = _name(source, args.name)
    if kind != "optimum":
        return _import_fused(args, source, kind, name)
    if not is_optimum_folder(source):
        raise UsageError(f"{source} is not an Optimum ONNX export (model.onnx + config.json, no manifest.json)")
    from models.fused_import import describe_graph, refuse_unknown_ops

    try:  # before loading: ORT's own refusal does not say what is supported
        refuse_unknown_ops(describe_graph(source / MODEL_FILE), source / MODEL_FILE)
    except ModelImportError as e:
        raise UsageError(str(e)) from None
    probe = load_model(source, EngineOptions(threads=1))
    if not isinstance(probe, TextGenerator):
        raise UsageError(f"{source}: only text-generation decoders can be imported")
    info, spec, layout = probe.info, probe.spec, probe.layout
    probe.close()
    out: Path = args.output
    _prepare_output(out)
    import tempfile

    from agent.manifest import GraphInfo
    from models.fused_import import fuse_optimum

    fused_dir = Path(tempfile.mkdtemp(prefix=".fuse-", dir=out.parent))
    try:
        src_model = source / MODEL_FILE
        fused: list[str] = []
        if args.fuse:
            config = json.loads((source / "config.json").read_text(encoding="utf-8"))
            try:
                fused = fuse_optimum(src_model, fused_dir / MODEL_FILE, config)
                src_model = fused_dir / MODEL_FILE
            except ModelImportError as e:
                log.warning("%s: fusions not applied: %s", source, e)
        if args.quantize == "int8":
            from models.quantize import quantize_int8

            quantize_int8(src_model, out / MODEL_FILE)
        elif args.quantize == "int4":
            from models.quantize import quantize_int4

            quantize_int4(src_model, out / MODEL_FILE)
        else:
            from models.quantize import EXTERNAL_DATA_MIN_BYTES, externalize, has_external_data

            if has_external_data(src_model) or src_model.stat().st_size < EXTERNAL_DATA_MIN_BYTES:
                for f in model_files(src_model):
                    shutil.copy2(src_model.parent / f, out / f)
            else:  # one big protobuf: rewrite with external data (ADR 0013)
                externalize(src_model, out / MODEL_FILE)
        copied = [f for f in COPIED if (source / f).is_file()]
        for f in copied:
            shutil.copy2(source / f, out / f)
        files = model_files(out / MODEL_FILE) + copied
        weights = sum((out / f).stat().st_size for f in model_files(out / MODEL_FILE))
        kv = layout.kv_bytes_per_token * spec.context_length
        facts = describe_graph(out / MODEL_FILE)
        graph = GraphInfo(
            source="optimum",
            kv_cache="concat",
            fusions=facts.fusions,
            quantization=facts.quantization_detail,
            tool="onnxruntime.transformers.optimizer" if fused else "",
        )
        manifest = ModelManifest(
            name=name,
            version=args.version,
            task="text-generation",
            engine="onnxruntime",
            model=MODEL_FILE,
            files=file_entries(out, files),
            quantization=args.quantize or graph_quantization(out / MODEL_FILE),
            tokenizer="tokenizer.json",
            min_ram_mb=(weights + kv) // 2**20 + OVERHEAD_MB,
            generation=info.generation,
            text=spec,
            license=args.license,
            description=f"imported from an Optimum export ({source.resolve().name})",
            graph=graph,
        )
        write_manifest(out, manifest)
        check = load_model(out, EngineOptions(threads=1))
        check.close()
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(fused_dir, ignore_errors=True)
    summary = {
        "schema": SCHEMA,
        "path": str(out),
        "name": name,
        "version": args.version,
        "quantization": manifest.quantization,
        "model_bytes": weights,
        "layers": spec.num_layers,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "context_length": spec.context_length,
        "eos_token_id": spec.eos_token_id,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"imported {source} -> {out}: {name} {args.version}, {manifest.quantization}, "
            f"{weights / 2**20:.1f} MiB, {spec.num_layers} layers, context {spec.context_length}"
        )
    return 0


def _import_fused(args: argparse.Namespace, source: Path, kind: str, name: str) -> int:
    """A Hugging Face checkpoint (through onnxruntime-genai's builder) or a folder the builder wrote."""
    from agent.manifest import GraphInfo
    from agent.runtime import EngineOptions, TextGenerator, load_model
    from agent.runtime import genai as genai_config
    from agent.runtime.errors import ModelLoadError
    from models import shared_tables
    from models.fused_import import (
        ModelImportError,
        check_hf_checkpoint,
        describe_graph,
        refuse_unknown_ops,
        run_builder,
    )
    from models.quantize import model_files

    out: Path = args.output
    if args.fuse:
        raise UsageError("--fuse applies to Optimum exports; builder graphs are fused already")
    if kind == "genai" and args.quantize:
        raise UsageError(
            f"{source} was built already ({genai_config.CONFIG_NAME}); to quantize, import the Hugging Face "
            f"checkpoint with --quantize {args.quantize}"
        )
    if kind == "hf-checkpoint":
        try:
            check_hf_checkpoint(source)
        except ModelImportError as e:
            raise UsageError(str(e)) from None
    _prepare_output(out)
    try:
        if kind == "hf-checkpoint":
            out.rmdir()  # the builder makes it
            try:
                run_builder(source, out, args.quantize or "fp32", args.builder_python, args.block_size)
            except ModelImportError as e:
                raise UsageError(str(e)) from None
            built = out
        else:
            built = source
        try:
            config = genai_config.load(built)
        except ModelLoadError as e:
            raise UsageError(str(e)) from None
        model_path = built / config.filename
        if not model_path.is_file():
            raise UsageError(f"{built}: genai_config.json names {config.filename}, which is missing")
        try:
            facts = describe_graph(model_path)
            refuse_unknown_ops(facts, model_path)
        except ModelImportError as e:
            raise UsageError(str(e)) from None
        weight_files = model_files(model_path)
        copied = [f for f in GENAI_COPIED if (built / f).is_file()]
        if built != out:
            for f in weight_files + copied:
                shutil.copy2(built / f, out / f)
        if "tokenizer.json" not in copied:
            raise UsageError(f"{built}: no tokenizer.json (the runtime needs a fast tokenizer file)")
        # a tied embedding / LM head held once in memory (ADR 0103); the data file may shrink
        tables = shared_tables.rewrite(out / config.filename)
        weight_files = model_files(out / config.filename)
        spec = config.spec
        weights = sum((out / f).stat().st_size for f in weight_files)
        kv_per_token = 2 * spec.num_layers * (spec.num_kv_heads or spec.num_heads) * spec.head_dim * 4
        # one shared buffer (the builder's layout), two ping-pong ones otherwise
        kv = kv_per_token * spec.context_length * (1 if config.share_buffer else 2)
        graph = GraphInfo(
            source="genai-builder",
            kv_cache="shared" if config.share_buffer else "concat",
            fusions=facts.fusions,
            quantization=facts.quantization_detail,
            tool=f"onnxruntime_genai.models.builder ({config.model_type})",
            tables=[t.detail for t in tables],
        )
        origin = "a Hugging Face checkpoint" if kind == "hf-checkpoint" else "an onnxruntime-genai folder"
        manifest = ModelManifest(
            name=name,
            version=args.version,
            task="text-generation",
            engine="onnxruntime",
            model=config.filename,
            files=file_entries(out, weight_files + copied),
            quantization=facts.quantization,
            tokenizer="tokenizer.json",
            min_ram_mb=(weights + kv) // 2**20 + OVERHEAD_MB,
            generation=config.generation,
            text=spec,
            license=args.license,
            description=f"imported from {origin} ({source.resolve().name}) through onnxruntime-genai's builder",
            graph=graph,
        )
        write_manifest(out, manifest)
        try:
            check = load_model(out, EngineOptions(threads=1))
        except ModelLoadError as e:
            raise UsageError(f"{out}: the imported model does not load: {e}") from None
        if not isinstance(check, TextGenerator):
            check.close()
            raise UsageError(f"{source}: only text-generation decoders can be imported")
        check.close()
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    summary = {
        "schema": SCHEMA,
        "path": str(out),
        "name": name,
        "version": args.version,
        "quantization": manifest.quantization,
        "model_bytes": weights,
        "layers": spec.num_layers,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "context_length": spec.context_length,
        "eos_token_id": spec.eos_token_id,
        "fusions": graph.fusions,
        "kv_cache": graph.kv_cache,
        "tables": graph.tables,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"imported {source} -> {out}: {name} {args.version}, {manifest.quantization} ({graph.quantization}), "
            f"{weights / 2**20:.1f} MiB, {spec.num_layers} layers, context {spec.context_length}, "
            f"fused: {', '.join(graph.fusions) or 'nothing'}, KV cache {graph.kv_cache}"
            + "".join(f"; {t}" for t in graph.tables)
        )
    return 0
