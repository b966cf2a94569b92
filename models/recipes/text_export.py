"""Export the text model to ONNX in the Hugging Face / Optimum decoder layout with KV cache
(one graph for prefill and decode), plus `config.json` and `generation_config.json` so the
folder also reads as an Optimum export.

Inputs: input_ids [batch, seq], attention_mask [batch, past+seq], position_ids [batch, seq],
past_key_values.N.key|value [batch, heads, past, head_dim]. Outputs: logits
[batch, seq, vocab], present.N.key|value [batch, heads, past+seq, head_dim].
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from models.recipes.gpt import GPT

OPSET = 17


class _OptimumLayout(nn.Module):
    """Flat positional inputs/outputs in the order of the names given to the exporter."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past_flat: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, presents = self.model(input_ids, position_ids, attention_mask, past)
        return (logits, *[t for kv in presents for t in kv])


def io_names(n_layer: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_onnx(model: GPT, path: Path) -> None:
    """torch.onnx.export(dynamo=False) with dynamic axes; example sizes > 1 (past 4, seq 3)
    so that no dimension is frozen into the graph."""
    cfg = model.cfg
    wrapped = copy.deepcopy(model).eval()
    wrapped.untie_head()
    module = _OptimumLayout(wrapped).eval()
    batch, past_len, seq = 2, 4, 3
    inputs = [
        torch.randint(0, cfg.vocab_size, (batch, seq)),
        torch.ones(batch, past_len + seq, dtype=torch.int64),
        torch.arange(past_len, past_len + seq).repeat(batch, 1),
    ]
    for _ in range(2 * cfg.n_layer):
        inputs.append(torch.randn(batch, cfg.n_head, past_len, cfg.head_dim))
    in_names, out_names = io_names(cfg.n_layer)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
    }
    for name in in_names[3:]:
        axes[name] = {0: "batch_size", 2: "past_sequence_length"}
    for name in out_names[1:]:
        axes[name] = {0: "batch_size", 2: "total_sequence_length"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(inputs),
            str(path),
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def hf_config(model: GPT, bos_id: int, eos_id: int) -> dict[str, object]:
    """config.json as transformers' GPT2Config writes it (the fields loaders read)."""
    cfg = model.cfg
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.n_embd,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def generation_config(bos_id: int, eos_id: int, max_new_tokens: int) -> dict[str, object]:
    return {
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "repetition_penalty": 1.1,
        "max_new_tokens": max_new_tokens,
    }


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
