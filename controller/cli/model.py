"""`fleetgen model import`: an Optimum ONNX decoder export → a fleetgen model folder.

    fleetgen model import ./gpt2-onnx -o ./models/gpt2-int8 --quantize int8

The source folder is what `optimum-cli export onnx --task text-generation-with-past`
writes (model.onnx, config.json, tokenizer.json, generation_config.json, maybe
model.onnx_data). The result holds the (optionally quantized) model, the tokenizer and
configs, and a `manifest.json` listing them with sizes and hashes, ready for
`fleetgen bundle build`. The result is loaded and warmed up before the command returns.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from agent.errors import UsageError
from agent.manifest import ModelManifest, file_entries, write_manifest

SCHEMA = 1
COPIED = ("tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json")
MODEL_FILE = "model.onnx"
OVERHEAD_MB = 150  # interpreter, runtime and arenas above weights + KV cache


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("model", parents=[common], help="import and quantize models")
    p.set_defaults(log_level="WARNING")  # one-shot: its output is the answer; INFO lines are noise
    verbs = p.add_subparsers(dest="model_command", metavar="VERB", required=True)
    imp = verbs.add_parser(
        "import", parents=[common], help="turn an Optimum ONNX decoder export into a fleetgen model folder"
    )
    imp.add_argument("source", type=Path, metavar="DIR", help="Optimum export folder")
    imp.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="MODEL_DIR",
        help="new fleetgen model folder (must not exist or be empty)",
    )
    imp.add_argument("--quantize", choices=["int8", "int4"], help="quantize the weights")
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
    from models.quantize import graph_quantization, model_files

    source: Path = args.source
    if not source.is_dir() or not is_optimum_folder(source):
        raise UsageError(f"{source} is not an Optimum ONNX export (model.onnx + config.json, no manifest.json)")
    name = _name(source, args.name)
    probe = load_model(source, EngineOptions(threads=1))
    if not isinstance(probe, TextGenerator):
        raise UsageError(f"{source}: only text-generation decoders can be imported")
    info, spec, layout = probe.info, probe.spec, probe.layout
    probe.close()
    out: Path = args.output
    _prepare_output(out)
    try:
        if args.quantize == "int8":
            from models.quantize import quantize_int8

            quantize_int8(source / MODEL_FILE, out / MODEL_FILE)
        elif args.quantize == "int4":
            from models.quantize import quantize_int4

            quantize_int4(source / MODEL_FILE, out / MODEL_FILE)
        else:
            from models.quantize import EXTERNAL_DATA_MIN_BYTES, externalize, has_external_data

            src_model = source / MODEL_FILE
            if has_external_data(src_model) or src_model.stat().st_size < EXTERNAL_DATA_MIN_BYTES:
                for f in model_files(src_model):
                    shutil.copy2(source / f, out / f)
            else:  # one big protobuf: rewrite with external data (ADR 0013)
                externalize(src_model, out / MODEL_FILE)
        copied = [f for f in COPIED if (source / f).is_file()]
        for f in copied:
            shutil.copy2(source / f, out / f)
        files = model_files(out / MODEL_FILE) + copied
        weights = sum((out / f).stat().st_size for f in model_files(out / MODEL_FILE))
        kv = layout.kv_bytes_per_token * spec.context_length
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
        )
        write_manifest(out, manifest)
        check = load_model(out, EngineOptions(threads=1))
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
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"imported {source} -> {out}: {name} {args.version}, {manifest.quantization}, "
            f"{weights / 2**20:.1f} MiB, {spec.num_layers} layers, context {spec.context_length}"
        )
    return 0
