"""The model manifest (`manifest.json`, DESIGN §5): defined once, here.

A fleetgen model folder holds `manifest.json` plus the files it lists. The runtime
loads models from such folders; the bundle tools pack a folder into a `.fgb` bundle
whose `manifest.json` is this same document. See docs/manifest.md.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from agent.errors import FleetgenError
from agent.protocol.messages import Message, Sha256Hex

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024
_CHUNK = 1024 * 1024

Name = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Version = Annotated[str, Meta(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")]
Task = Literal["text-generation", "image-generation"]
Engine = Literal["onnxruntime", "tflite"]
Quantization = Literal["fp32", "fp16", "int8", "int4"]


class ManifestError(FleetgenError):
    """A model folder or its manifest is missing, malformed or does not match its files."""

    exit_code = 2


class FileEntry(msgspec.Struct, kw_only=True, frozen=True):
    path: Annotated[str, Meta(min_length=1, max_length=255)]
    length: Annotated[int, Meta(ge=0)]
    sha256: Sha256Hex


class GenerationDefaults(msgspec.Struct, kw_only=True, frozen=True):
    max_tokens: Annotated[int, Meta(ge=1, le=65536)] = 128
    temperature: Annotated[float, Meta(ge=0, le=10)] = 0.8
    top_k: Annotated[int, Meta(ge=0)] = 40
    top_p: Annotated[float, Meta(gt=0, le=1)] = 0.95
    repetition_penalty: Annotated[float, Meta(gt=0, le=10)] = 1.1
    stop: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=8)] = []


class SelfTest(msgspec.Struct, kw_only=True, frozen=True):
    """A short generation run after install; the health check passes if it completes
    and, when set, its output contains `expect`.

    The model-aware part (agent/update/health.py, docs/protocol.md): `probe` is a text the
    device scores; `fleetgen bundle build` records its perplexity on the reference CPU
    engine in `probe_perplexity`, and the device must land within `perplexity_tolerance`
    (relative) of it. The check runs in a child process killed after `time_limit_s` and
    bounded to `memory_limit_mb` of address space."""

    prompt: Annotated[str, Meta(max_length=1024)] = ""
    max_tokens: Annotated[int, Meta(ge=1, le=256)] = 8
    expect: Annotated[str, Meta(max_length=256)] | None = None
    image_class: Annotated[int, Meta(ge=0)] | None = None
    probe: Annotated[str, Meta(max_length=8192)] = ""
    probe_perplexity: Annotated[float, Meta(gt=0)] | None = None
    perplexity_tolerance: Annotated[float, Meta(gt=0, le=10)] = 0.1
    max_perplexity: Annotated[float, Meta(gt=0)] | None = None
    min_tokens_per_s: Annotated[float, Meta(ge=0)] | None = None
    time_limit_s: Annotated[float, Meta(gt=0, le=3600)] = 120.0
    memory_limit_mb: Annotated[int, Meta(ge=16)] | None = None


class TextSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Shape of a decoder in the Hugging Face / Optimum layout."""

    num_layers: Annotated[int, Meta(ge=1, le=512)]
    num_heads: Annotated[int, Meta(ge=1, le=512)]
    head_dim: Annotated[int, Meta(ge=1, le=4096)]
    vocab_size: Annotated[int, Meta(ge=1)]
    context_length: Annotated[int, Meta(ge=1)]
    eos_token_id: Annotated[int, Meta(ge=0)] | None = None
    bos_token_id: Annotated[int, Meta(ge=0)] | None = None
    num_kv_heads: Annotated[int, Meta(ge=1, le=512)] | None = None


class GraphInfo(msgspec.Struct, kw_only=True, frozen=True):
    """How `fleetgen model import` made the graph, and how the runtime drives its KV cache.

    `kv_cache`: "concat" = the Optimum layout (past in, past + new out: two ping-pong
    buffers); "shared" = GroupQueryAttention with past and present in one preallocated buffer
    (onnxruntime-genai's `past_present_share_buffer`). `fusions`: the fused operators the
    graph holds (e.g. GroupQueryAttention, SimplifiedLayerNormalization, MatMulNBits);
    `quantization`: how the weights were quantized, in words (block size, symmetry, ...);
    `tables`: how a tied embedding / LM head is held once in memory (ADR 0103), in words."""

    source: Literal["optimum", "genai-builder", "fleetgen"] = "optimum"
    kv_cache: Literal["concat", "shared"] = "concat"
    fusions: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] = []
    quantization: Annotated[str, Meta(max_length=256)] = ""
    tool: Annotated[str, Meta(max_length=128)] = ""
    tables: Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=8)] = []


class ImageSpec(msgspec.Struct, kw_only=True, frozen=True):
    width: Annotated[int, Meta(ge=1, le=8192)]
    height: Annotated[int, Meta(ge=1, le=8192)]
    channels: Literal[1, 3, 4] = 1
    num_classes: Annotated[int, Meta(ge=0)] = 0
    latent_dim: Annotated[int, Meta(ge=0)] = 0
    # What the generator's output values mean: "0,1" (sigmoid) or "-1,1" (tanh); the
    # runtime maps them to 0..255 (docs/runtime.md).
    pixel_range: Literal["0,1", "-1,1"] = "0,1"


class ModelManifest(Message, kw_only=True, frozen=True):
    name: Name
    version: Version
    task: Task
    engine: Engine
    model: Annotated[str, Meta(min_length=1, max_length=255)]
    files: Annotated[list[FileEntry], Meta(min_length=1, max_length=256)]
    quantization: Quantization = "fp32"
    tokenizer: Annotated[str, Meta(max_length=255)] | None = None
    boards: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] = (
        msgspec.field(default_factory=lambda: ["*"])
    )
    accelerators: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=32)] = []
    min_ram_mb: Annotated[int, Meta(ge=0)] = 0
    generation: GenerationDefaults = GenerationDefaults()
    self_test: SelfTest = SelfTest()
    text: TextSpec | None = None
    image: ImageSpec | None = None
    license: Annotated[str, Meta(max_length=128)] = ""
    description: Annotated[str, Meta(max_length=2048)] = ""
    graph: GraphInfo | None = None

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ManifestError(f"manifest of {self.name}: no file entry for {path!r}")


def check_relative_path(path: str) -> str:
    """Refuse absolute paths, `..`, and anything a tar member could use to escape its folder."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or "\\" in path or path != p.as_posix() or not p.parts:
        raise ManifestError(f"file path {path!r} must be relative, normalised, without '..'")
    return path


def _validate(manifest: ModelManifest) -> ModelManifest:
    paths = [check_relative_path(f.path) for f in manifest.files]
    if len(set(paths)) != len(paths):
        raise ManifestError(f"manifest of {manifest.name}: duplicate file entries")
    if MANIFEST_NAME in paths:
        raise ManifestError(f"manifest of {manifest.name}: must not list {MANIFEST_NAME} itself")
    manifest.file(manifest.model)
    if manifest.tokenizer is not None:
        manifest.file(manifest.tokenizer)
    if manifest.task == "text-generation" and manifest.text is None:
        raise ManifestError(f"manifest of {manifest.name}: text-generation needs a 'text' section")
    if manifest.task == "image-generation" and manifest.image is None:
        raise ManifestError(f"manifest of {manifest.name}: image-generation needs an 'image' section")
    return manifest


def parse_manifest(data: bytes, origin: str = MANIFEST_NAME) -> ModelManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{origin}: {len(data)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        manifest = msgspec.json.decode(data, type=ModelManifest)
    except msgspec.ValidationError as e:
        raise ManifestError(f"{origin}: {e}") from None
    except msgspec.DecodeError as e:
        raise ManifestError(f"{origin}: not valid JSON ({e})") from None
    return _validate(manifest)


def load_manifest(model_dir: Path) -> ModelManifest:
    path = Path(model_dir) / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{model_dir}: no {MANIFEST_NAME}") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror})") from None
    return parse_manifest(data, str(path))


def encode_manifest(manifest: ModelManifest) -> bytes:
    """Pretty, stable JSON (sorted keys) so that manifests diff well in git."""
    return msgspec.json.format(msgspec.json.encode(_validate(manifest), order="sorted"), indent=2)


def write_manifest(model_dir: Path, manifest: ModelManifest) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(encode_manifest(manifest) + b"\n")
    os.replace(tmp, path)
    return path


def sha256_file(path: Path) -> tuple[int, str]:
    """(length, sha256 hex) of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            length += len(chunk)
    return length, digest.hexdigest()


def file_entries(model_dir: Path, paths: Iterable[str]) -> list[FileEntry]:
    """Manifest entries (length, sha256) for `paths` relative to `model_dir`."""
    entries = []
    for rel in sorted(set(paths)):
        length, digest = sha256_file(Path(model_dir) / check_relative_path(rel))
        entries.append(FileEntry(path=rel, length=length, sha256=digest))
    return entries


def verify_files(model_dir: Path, manifest: ModelManifest) -> None:
    """Check every listed file exists with its declared length and sha256."""
    for entry in manifest.files:
        path = Path(model_dir) / entry.path
        if not path.is_file():
            raise ManifestError(f"{manifest.name}: missing file {entry.path}")
        length, digest = sha256_file(path)
        if length != entry.length:
            raise ManifestError(
                f"{manifest.name}: {entry.path} is {length} bytes, manifest says {entry.length}"
            )
        if digest != entry.sha256:
            raise ManifestError(f"{manifest.name}: {entry.path} sha256 mismatch")
