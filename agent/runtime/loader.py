"""Model folders → what the runtime needs to load them.

Three kinds of folder are accepted:
- a fleetgen model folder: `manifest.json` (agent.manifest) plus the files it lists;
- a Hugging Face / Optimum ONNX decoder export: `model.onnx` (with past key values),
  `config.json`, `tokenizer.json`, maybe `generation_config.json` and `model.onnx_data`,
  and no manifest. What the manifest would say is inferred (agent.runtime.optimum).
- an onnxruntime-genai model folder (what its model builder writes): `genai_config.json`,
  the graph it names, `tokenizer.json`, no manifest (agent.runtime.genai).

`ModelInfo.kv_cache` says how the text generator drives the cache: "concat" (the Optimum
layout, agent.runtime.decoder) or "shared" (GroupQueryAttention with one buffer for past
and present, agent.runtime.gqa), from the manifest's `graph` section or genai_config.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.manifest import (
    MANIFEST_NAME,
    GenerationDefaults,
    ImageSpec,
    ModelManifest,
    Quantization,
    SelfTest,
    TextSpec,
    load_manifest,
)
from agent.runtime import genai, optimum
from agent.runtime.engine import Engine, EngineOptions, open_engine
from agent.runtime.errors import ModelLoadError

log = logging.getLogger(__name__)

OPTIMUM_MODEL = "model.onnx"
OPTIMUM_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclass(frozen=True)
class ModelInfo:
    """Everything the generators need about a model folder, whatever its kind."""

    root: Path
    name: str
    version: str
    task: Literal["text-generation", "image-generation"]
    engine: str
    model_path: Path
    quantization: Quantization
    origin: Literal["manifest", "optimum", "genai"]
    tokenizer_path: Path | None = None
    text: TextSpec | None = None
    image: ImageSpec | None = None
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    self_test: SelfTest = field(default_factory=SelfTest)
    extra_eos_ids: tuple[int, ...] = ()
    kv_cache: Literal["concat", "shared"] = "concat"


def is_optimum_folder(root: Path) -> bool:
    return not (root / MANIFEST_NAME).exists() and (root / OPTIMUM_MODEL).is_file() and (root / "config.json").is_file()


def _from_manifest(root: Path, manifest: ModelManifest) -> ModelInfo:
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            raise ModelLoadError(f"{manifest.name}: missing file {entry.path} in {root}")
        size = path.stat().st_size
        if size != entry.length:
            raise ModelLoadError(
                f"{manifest.name}: {entry.path} is {size} bytes, manifest says {entry.length} (truncated or replaced?)"
            )
    return ModelInfo(
        root=root,
        name=manifest.name,
        version=manifest.version,
        task=manifest.task,
        engine=manifest.engine,
        model_path=root / manifest.model,
        quantization=manifest.quantization,
        origin="manifest",
        tokenizer_path=root / manifest.tokenizer if manifest.tokenizer else None,
        text=manifest.text,
        image=manifest.image,
        generation=manifest.generation,
        self_test=manifest.self_test,
        kv_cache=_manifest_kv_cache(root, manifest),
    )


def _manifest_kv_cache(root: Path, manifest: ModelManifest) -> Literal["concat", "shared"]:
    if manifest.graph is not None:
        return manifest.graph.kv_cache
    # a builder folder given a manifest by hand: what its genai_config.json declares
    if any(f.path == genai.CONFIG_NAME for f in manifest.files):
        return "shared" if genai.load(root).share_buffer else "concat"
    return "concat"


def open_folder(root: Path, options: EngineOptions) -> tuple[ModelInfo, Engine]:
    """Describe the folder and load its model with the right engine."""
    root = Path(root)
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist")
    if (root / MANIFEST_NAME).exists():
        info = _from_manifest(root, load_manifest(root))
        return info, open_engine(info.engine, info.model_path, options)
    if genai.is_genai_folder(root):
        return _open_genai(root, options)
    if not (root / OPTIMUM_MODEL).is_file() and (root / "decoder_model_merged.onnx").is_file():
        raise ModelLoadError(
            f"{root}: decoder_model_merged.onnx is the older Optimum layout (two "
            "branches); export again with a current optimum-cli to get one "
            "model.onnx with past key values"
        )
    if not (root / OPTIMUM_MODEL).is_file():
        raise ModelLoadError(
            f"{root}: neither a fleetgen model folder ({MANIFEST_NAME}) nor an "
            f"Optimum export ({OPTIMUM_MODEL} + config.json)"
        )
    config = optimum.read_json(root / "config.json")
    generation = optimum.read_json(root / "generation_config.json", required=False)
    engine = open_engine("onnxruntime", root / OPTIMUM_MODEL, options)
    try:
        spec = optimum.text_spec(config, generation, engine.inputs, engine.outputs, str(root))
    except ModelLoadError:
        engine.close()
        raise
    eos = optimum.eos_ids(config, generation)
    tokenizer = root / "tokenizer.json"
    info = ModelInfo(
        root=root,
        name=str(config.get("model_type", root.name)),
        version="0",
        task="text-generation",
        engine="onnxruntime",
        model_path=root / OPTIMUM_MODEL,
        quantization=_guess_quantization(root),
        origin="optimum",
        tokenizer_path=tokenizer,
        text=spec,
        generation=optimum.generation_defaults(generation, str(root / "generation_config.json")),
        extra_eos_ids=tuple(eos[1:]),
    )
    log.info(
        "%s: Optimum export, %d layers, %d kv heads x %d, context %d, eos %s",
        root,
        spec.num_layers,
        spec.num_kv_heads or spec.num_heads,
        spec.head_dim,
        spec.context_length,
        eos or "none",
    )
    return info, engine


def _open_genai(root: Path, options: EngineOptions) -> tuple[ModelInfo, Engine]:
    config = genai.load(root)
    model_path = root / config.filename
    if not model_path.is_file():
        raise ModelLoadError(f"{root}: genai_config.json names {config.filename}, which is missing")
    tokenizer = root / "tokenizer.json"
    if not tokenizer.is_file():
        raise ModelLoadError(f"{root}: no tokenizer.json next to genai_config.json")
    engine = open_engine("onnxruntime", model_path, options)
    info = ModelInfo(
        root=root,
        name=config.model_type or root.name,
        version="0",
        task="text-generation",
        engine="onnxruntime",
        model_path=model_path,
        quantization=_guess_quantization(root),
        origin="genai",
        tokenizer_path=tokenizer,
        text=config.spec,
        generation=config.generation,
        extra_eos_ids=config.eos_ids[1:],
        kv_cache="shared" if config.share_buffer else "concat",
    )
    spec = config.spec
    log.info(
        "%s: onnxruntime-genai folder (%s), %d layers, %d kv heads x %d, context %d, kv cache %s",
        root,
        config.model_type,
        spec.num_layers,
        spec.num_kv_heads or spec.num_heads,
        spec.head_dim,
        spec.context_length,
        info.kv_cache,
    )
    return info, engine


def _guess_quantization(root: Path) -> Quantization:
    name = root.name.lower()
    known: tuple[Quantization, ...] = ("int4", "int8", "fp16")
    for q in known:
        if q in name:
            return q
    return "fp32"
