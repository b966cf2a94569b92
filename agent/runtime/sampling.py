"""Next-token choice: repetition penalty, temperature, top-k, top-p, seeded sampling.

Pure numpy; one `Sampler` per request (it owns the request's random Generator, so the
same seed gives the same tokens).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from agent.runtime.errors import RequestError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 (or greedy=True) picks the most likely token; top_k 0 and top_p 1 turn
    those filters off; repetition_penalty 1 turns it off (HF semantics: positive logits of
    seen tokens are divided by it, negative ones multiplied)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        _check("temperature", self.temperature, 0.0, 10.0)
        _check("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check("repetition_penalty", self.repetition_penalty, 0.0, 10.0, low_open=True)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise RequestError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise RequestError(f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


def _check(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise RequestError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}")


class Sampler:
    def __init__(self, params: SamplingParams, vocab_size: int) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._rng = np.random.default_rng(self.seed)
        self._seen = np.zeros(vocab_size, dtype=bool)
        self._seen_ids: list[int] = []

    def observe(self, token_ids: list[int] | np.ndarray) -> None:
        """Record tokens (prompt and generated) for the repetition penalty."""
        for t in np.asarray(token_ids, dtype=np.int64).ravel().tolist():
            if 0 <= t < self._seen.size and not self._seen[t]:
                self._seen[t] = True
                self._seen_ids.append(t)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        logits = np.asarray(logits, dtype=np.float32)
        if p.repetition_penalty != 1.0 and self._seen_ids:
            logits = logits.copy()
            idx = np.asarray(self._seen_ids, dtype=np.int64)
            seen = logits[idx]
            logits[idx] = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        token = int(np.argmax(logits)) if p.is_greedy else self._sample(logits)
        self.observe([token])
        return token

    def _sample(self, logits: np.ndarray) -> int:
        p = self.params
        if 0 < p.top_k < logits.size:
            candidates = np.argpartition(logits, -p.top_k)[-p.top_k :]
        else:
            candidates = np.arange(logits.size)
        scaled = logits[candidates].astype(np.float64) / p.temperature
        order = np.argsort(-scaled, kind="stable")
        candidates, scaled = candidates[order], scaled[order]
        probs = np.exp(scaled - scaled[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            # smallest prefix whose mass reaches top_p (always at least one token)
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
        cdf = np.cumsum(probs)
        index = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(candidates[min(index, candidates.size - 1)])
