"""What an onnxruntime-genai model folder declares in `genai_config.json`, read without
onnxruntime-genai.

onnxruntime-genai's model builder writes `model.onnx` (+ `model.onnx.data`),
`genai_config.json` and the tokenizer files, and no `config.json`. The runtime reads from
`genai_config.json` what it needs to drive the graph itself: the decoder's file name, its
input/output names (they must be the Optimum-style names the decoders bind), layers, heads,
KV heads, head size, vocab, context length, EOS/BOS/pad ids, whether past and present share
one buffer (`search.past_present_share_buffer`), and the search defaults (`do_sample`,
`temperature`, `top_k`, `top_p`, `repetition_penalty`, `max_length`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from agent.manifest import GenerationDefaults, TextSpec
from agent.runtime.errors import LayoutError, ModelLoadError
from agent.runtime.optimum import read_json, token_ids

CONFIG_NAME = "genai_config.json"

# the names the decoders bind (agent.runtime.decoder); the builder uses them too
EXPECTED_NAMES = {
    ("inputs", "input_ids"): "input_ids",
    ("inputs", "attention_mask"): "attention_mask",
    ("inputs", "past_key_names"): "past_key_values.%d.key",
    ("inputs", "past_value_names"): "past_key_values.%d.value",
    ("outputs", "logits"): "logits",
    ("outputs", "present_key_names"): "present.%d.key",
    ("outputs", "present_value_names"): "present.%d.value",
}
# model types whose builder graphs this runtime has run (decoder-only, one graph)
KNOWN_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo", "smollm3")


@dataclass(frozen=True)
class GenaiConfig:
    model_type: str
    filename: str
    spec: TextSpec
    eos_ids: tuple[int, ...]
    share_buffer: bool
    generation: GenerationDefaults
    extra: dict[str, Any] = field(default_factory=dict)


def is_genai_folder(root: Path) -> bool:
    return (root / CONFIG_NAME).is_file()


def _pos_int(section: Mapping[str, Any], key: str, origin: str, required: bool = True) -> int | None:
    value = section.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{origin}: {key} must be a positive integer, got {value!r}")
    return value


def parse(doc: Mapping[str, Any], origin: str) -> GenaiConfig:
    model = doc.get("model")
    if not isinstance(model, dict):
        raise ModelLoadError(f"{origin}: no 'model' section")
    decoder = model.get("decoder")
    if not isinstance(decoder, dict):
        raise ModelLoadError(f"{origin}: no 'model.decoder' section (only decoder-only models are supported)")
    model_type = str(model.get("type", ""))
    for section in ("encoder", "vision", "speech", "embedding"):
        if section in model:
            raise ModelLoadError(
                f"{origin}: model type {model_type!r} has a {section} part; supported are decoder-only "
                f"text models ({', '.join(KNOWN_TYPES)})"
            )
    if isinstance(decoder.get("pipeline"), list) and decoder["pipeline"]:
        raise ModelLoadError(f"{origin}: a decoder pipeline of several graphs is not supported (one model.onnx)")
    for (part, key), want in EXPECTED_NAMES.items():
        got = (decoder.get(part) or {}).get(key, want)
        if got != want:
            raise LayoutError(f"{origin}: decoder.{part}.{key} is {got!r}; the runtime binds {want!r}")
    filename = decoder.get("filename", "model.onnx")
    if not isinstance(filename, str) or "/" in filename or filename.startswith("."):
        raise ModelLoadError(f"{origin}: decoder.filename {filename!r} must be a plain file name")
    layers = _pos_int(decoder, "num_hidden_layers", origin)
    heads = _pos_int(decoder, "num_attention_heads", origin)
    kv_heads = _pos_int(decoder, "num_key_value_heads", origin, required=False) or heads
    head_dim = _pos_int(decoder, "head_size", origin, required=False)
    hidden = _pos_int(decoder, "hidden_size", origin, required=False)
    if head_dim is None:
        if hidden is None or heads is None:
            raise ModelLoadError(f"{origin}: needs decoder.head_size or decoder.hidden_size")
        head_dim = hidden // heads
    vocab = _pos_int(model, "vocab_size", origin)
    context = _pos_int(model, "context_length", origin)
    eos = token_ids(model.get("eos_token_id"))
    bos = token_ids(model.get("bos_token_id"))
    search = doc.get("search") if isinstance(doc.get("search"), dict) else {}
    assert isinstance(search, dict)
    spec = TextSpec(
        num_layers=layers or 1,
        num_heads=heads or 1,
        head_dim=head_dim,
        vocab_size=vocab or 1,
        context_length=context or 1,
        eos_token_id=eos[0] if eos else None,
        bos_token_id=bos[0] if bos else None,
        num_kv_heads=kv_heads,
    )
    return GenaiConfig(
        model_type=model_type,
        filename=filename,
        spec=spec,
        eos_ids=tuple(eos),
        share_buffer=bool(search.get("past_present_share_buffer", False)),
        generation=generation_defaults(search, context or 1, origin),
    )


def generation_defaults(search: Mapping[str, Any], context: int, origin: str) -> GenerationDefaults:
    """genai's search section → our defaults; `do_sample: false` (or absent) is greedy.

    `max_length` counts prompt + new tokens in genai; ours counts new tokens, so it becomes
    `max_tokens` only when it is below the context (the builder writes the context itself).
    """
    doc: dict[str, Any] = {"repetition_penalty": search.get("repetition_penalty", 1.0)}
    max_length = search.get("max_length")
    if isinstance(max_length, int) and not isinstance(max_length, bool) and 1 <= max_length < context:
        doc["max_tokens"] = max_length
    if search.get("do_sample", False):
        top_k = search.get("top_k", 50)
        doc.update(temperature=search.get("temperature", 1.0), top_k=top_k, top_p=search.get("top_p", 1.0))
    else:
        doc.update(temperature=0.0, top_k=0, top_p=1.0)
    try:
        return msgspec.convert(doc, GenerationDefaults)
    except msgspec.ValidationError as e:
        raise ModelLoadError(f"{origin} (search): {e}") from None


def load(root: Path) -> GenaiConfig:
    path = root / CONFIG_NAME
    return parse(read_json(path), str(path))
