"""A GPT-2-architecture decoder in plain PyTorch (no `transformers`): learned positions,
pre-LayerNorm blocks, GELU (tanh form, as GPT-2), multi-head attention.

`forward` takes and returns the KV cache in the Hugging Face / Optimum decoder layout
so the exported ONNX graph serves prefill and decode with one graph. Training calls
`forward` without a cache.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

# Finite rather than -inf so a fully masked row (a left-pad query) stays NaN-free.
_MASKED = -1e9


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 4096
    n_positions: int = 256
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, s, _ = t.shape
        return t.view(b, s, self.n_head, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, s, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if past is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
            y = _cached_attention(q, k, v, key_mask)
        y = y.transpose(1, 2).reshape(b, s, c)
        return self.proj(y), (k, v)


def _cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention written out op by op so it exports to plain ONNX ops with dynamic sizes:
    query i (absolute position past+i) sees key j when j <= past+i and the mask allows j."""
    q_len, k_len = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    rows = torch.arange(q_len, device=q.device).unsqueeze(1) + (k_len - q_len)
    cols = torch.arange(k_len, device=q.device).unsqueeze(0)
    allowed = (cols <= rows).unsqueeze(0).unsqueeze(0)
    if key_mask is not None:
        allowed = allowed & (key_mask[:, None, None, :] > 0)
    scores = scores.masked_fill(~allowed, _MASKED)
    return torch.softmax(scores, dim=-1) @ v


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.mlp_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, present = self.attn(self.ln_1(x), past, key_mask)
        x = x + a
        x = x + self.mlp_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))
        return x, present


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        # Untied head, initialised from wte at export time (see untie_head): the
        # quantizers only quantize a MatMul whose weight is its own initializer.
        self.lm_head: nn.Parameter | None = None
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def untie_head(self) -> None:
        self.lm_head = nn.Parameter(self.wte.weight.detach().t().contiguous().clone())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        x = self.wte(input_ids) + self.wpe(position_ids)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i], attention_mask)
            presents.append(present)
        x = self.ln_f(x)
        head = self.wte.weight.t() if self.lm_head is None else self.lm_head
        return x @ head, presents
