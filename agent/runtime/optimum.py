"""What a Hugging Face / Optimum decoder folder declares, read without a fleetgen manifest.

Pure functions over the parsed `config.json` / `generation_config.json` and the graph's
input descriptions: layers, heads, head size, KV heads, vocab, context, EOS/BOS, and the
generation defaults. Config keys of GPT-2 (`n_layer`, `n_head`, `n_embd`, `n_positions`)
and of Llama-style models (`num_hidden_layers`, `num_attention_heads`,
`num_key_value_heads`, `hidden_size`, `max_position_embeddings`) are understood; where
the graph has static sizes they must agree with the config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from agent.manifest import GenerationDefaults, TextSpec
from agent.runtime.engine import TensorInfo
from agent.runtime.errors import LayoutError, ModelLoadError

_PAST = re.compile(r"^past_key_values\.(\d+)\.key$")


def read_json(path: Path, required: bool = True) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ModelLoadError(f"{path.parent}: no {path.name}") from None
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _int(config: Mapping[str, Any], *keys: str, origin: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{origin}: {key} must be a positive integer, got {value!r}")
        return value
    return None


def token_ids(value: Any) -> list[int]:
    """Token ids from a config value: an id, a list of ids, or anything else (none)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int) and value >= 0:
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
    return []


def eos_ids(config: Mapping[str, Any], generation: Mapping[str, Any]) -> list[int]:
    """All EOS ids (generation_config wins; it may list several, as Llama 3 does)."""
    return token_ids(generation.get("eos_token_id")) or token_ids(config.get("eos_token_id"))


def text_spec(
    config: Mapping[str, Any],
    generation: Mapping[str, Any],
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    origin: str,
) -> TextSpec:
    layers_cfg = _int(config, "num_hidden_layers", "n_layer", "num_layers", origin=origin)
    heads = _int(config, "num_attention_heads", "n_head", origin=origin)
    kv_heads = _int(config, "num_key_value_heads", "n_head_kv", "multi_query_group_num", origin=origin)
    hidden = _int(config, "hidden_size", "n_embd", "d_model", origin=origin)
    head_dim = _int(config, "head_dim", origin=origin)
    context = _int(config, "max_position_embeddings", "n_positions", "n_ctx", "seq_length", origin=origin)
    vocab = _int(config, "vocab_size", origin=origin)

    past = sorted(int(m.group(1)) for t in inputs if (m := _PAST.match(t.name)))
    if not past:
        raise LayoutError(
            f"{origin}: graph has no past_key_values.N.key inputs (exported without "
            "KV cache? use --task text-generation-with-past)"
        )
    layers = layers_cfg or len(past)
    if layers_cfg is not None and layers_cfg != len(past):
        raise LayoutError(f"{origin}: config says {layers_cfg} layers, graph has {len(past)} past inputs")
    first = next(t for t in inputs if t.name == "past_key_values.0.key")
    g_heads = first.shape[1] if len(first.shape) == 4 and isinstance(first.shape[1], int) else None
    g_dim = first.shape[3] if len(first.shape) == 4 and isinstance(first.shape[3], int) else None
    if kv_heads is None:
        kv_heads = g_heads or heads
    if head_dim is None:
        head_dim = g_dim or (hidden // heads if hidden and heads else None)
    if heads is None:
        heads = kv_heads
    logits = next((t for t in outputs if t.name == "logits"), None)
    if vocab is None and logits is not None and isinstance(logits.shape[-1], int):
        vocab = logits.shape[-1]
    missing = [
        k
        for k, v in (
            ("attention heads", heads),
            ("head size", head_dim),
            ("vocab_size", vocab),
            ("context length", context),
        )
        if v is None
    ]
    if missing:
        raise ModelLoadError(f"{origin}: cannot infer {', '.join(missing)} from config.json or the graph")
    eos = eos_ids(config, generation)
    bos = token_ids(generation.get("bos_token_id")) or token_ids(config.get("bos_token_id"))
    return TextSpec(
        num_layers=layers,
        num_heads=heads or 1,
        head_dim=head_dim or 1,
        vocab_size=vocab or 1,
        context_length=context or 1,
        eos_token_id=eos[0] if eos else None,
        bos_token_id=bos[0] if bos else None,
        num_kv_heads=kv_heads,
    )


def generation_defaults(generation: Mapping[str, Any], origin: str = "generation_config.json") -> GenerationDefaults:
    """HF generation_config → our defaults; `do_sample: false` (or absent) means greedy.

    Values outside what a request accepts are refused here, naming the key, rather than
    failing every request later.
    """
    doc: dict[str, Any] = {"repetition_penalty": generation.get("repetition_penalty", 1.0)}
    if isinstance(generation.get("max_new_tokens"), int):
        doc["max_tokens"] = generation["max_new_tokens"]
    if generation.get("do_sample", False):
        doc.update(
            temperature=generation.get("temperature", 1.0),
            top_k=generation.get("top_k", 50),
            top_p=generation.get("top_p", 1.0),
        )
    else:
        doc.update(temperature=0.0, top_k=0, top_p=1.0)
    try:
        return msgspec.convert(doc, GenerationDefaults)
    except msgspec.ValidationError as e:
        raise ModelLoadError(f"{origin}: {e}") from None
