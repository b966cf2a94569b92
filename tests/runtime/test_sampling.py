"""Sampling: filters, penalties, reproducibility, validation."""

from __future__ import annotations

import numpy as np
import pytest

from agent.runtime.errors import RequestError
from agent.runtime.sampling import Sampler, SamplingParams, nucleus

LOGITS = np.array([1.0, 3.0, 2.0, 0.5, 2.9], dtype=np.float32)


def draws(params: SamplingParams, n: int = 2000) -> np.ndarray:
    s = Sampler(params, LOGITS.size)
    out = []
    for _ in range(n):
        out.append(s(LOGITS))
        s._seen_ids.clear()
        s._seen[:] = False
    return np.bincount(out, minlength=LOGITS.size)


def test_greedy_and_temperature_zero_take_argmax() -> None:
    assert Sampler(SamplingParams(greedy=True, temperature=1.0), 5)(LOGITS) == 1
    assert Sampler(SamplingParams(temperature=0.0), 5)(LOGITS) == 1


def test_top_k_one_is_greedy() -> None:
    counts = draws(SamplingParams(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0, seed=0))
    assert counts[1] == counts.sum()


def test_top_k_limits_candidates() -> None:
    counts = draws(SamplingParams(temperature=1.0, top_k=3, top_p=1.0, repetition_penalty=1.0, seed=0))
    assert set(np.flatnonzero(counts)) == {1, 2, 4}


def test_top_p_keeps_smallest_nucleus() -> None:
    # softmax(LOGITS): p1 ≈ .39, p4 ≈ .35 → top_p 0.5 keeps exactly tokens 1 and 4
    counts = draws(SamplingParams(temperature=1.0, top_k=0, top_p=0.5, repetition_penalty=1.0, seed=0))
    assert set(np.flatnonzero(counts)) == {1, 4}


@pytest.mark.parametrize("sharpness", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.999])
def test_nucleus_equals_sorting_the_whole_vocabulary(sharpness: float, top_p: float) -> None:
    # Hugging Face's top-p: sort everything, keep the shortest head whose mass reaches top_p
    w = np.exp(np.random.default_rng(int(sharpness * 10)).standard_normal(50257) * sharpness).astype(np.float32)
    order = np.argsort(-w, kind="stable")
    mass = np.cumsum(w[order], dtype=np.float64) / w.sum(dtype=np.float64)
    expected = order[: int(np.searchsorted(mass, top_p)) + 1]
    got = nucleus(w, top_p)
    # equal weights may come in either order (float32 ties): compare what is kept by weight
    assert np.array_equal(np.sort(w[got]), np.sort(w[expected]))
    assert np.all(np.diff(w[got]) <= 0)  # most likely first


def test_sampling_follows_the_distribution() -> None:
    counts = draws(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=1), n=20000)
    p = np.exp(LOGITS - LOGITS.max())
    p /= p.sum()
    assert np.allclose(counts / counts.sum(), p, atol=0.015)


def test_repetition_penalty_demotes_seen_tokens() -> None:
    s = Sampler(SamplingParams(greedy=True, repetition_penalty=2.0), 5)
    s.observe([1])
    assert s(LOGITS) == 4  # 3.0 / 2 = 1.5 < 2.9


def test_repetition_penalty_multiplies_negative_logits() -> None:
    # Hugging Face: a seen token's logit is divided by the penalty when positive and
    # multiplied by it when negative, so both move down
    logits = np.array([-1.0, -1.5, -3.0], dtype=np.float32)
    s = Sampler(SamplingParams(greedy=True, repetition_penalty=2.0), 3)
    s.observe([0])
    assert s(logits) == 1  # -1.0 * 2 = -2.0 < -1.5 (dividing would have raised it to -0.5)


def test_same_seed_same_draws() -> None:
    p = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=42)
    a, b = Sampler(p, 5), Sampler(p, 5)
    assert [a(LOGITS) for _ in range(50)] == [b(LOGITS) for _ in range(50)]


def test_unseeded_sampler_reports_its_seed() -> None:
    s = Sampler(SamplingParams(temperature=1.0), 5)
    t = Sampler(SamplingParams(temperature=1.0, seed=s.seed), 5)
    assert [s(LOGITS) for _ in range(20)] == [t(LOGITS) for _ in range(20)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 11.0},
        {"temperature": -1.0},
        {"temperature": float("inf")},
        {"top_p": 0.0},
        {"top_p": 2.0},
        {"top_k": -5},
        {"top_k": 2.5},
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
        {"seed": -1},
        {"seed": True},
    ],
)
def test_invalid_values_name_the_parameter(kwargs: dict[str, object]) -> None:
    (key,) = kwargs
    with pytest.raises(RequestError, match=key):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_frequency_penalty_grows_with_each_repetition() -> None:
    logits = np.array([5.0, 4.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(greedy=True, repetition_penalty=1.0, frequency_penalty=0.6), 3)
    # token 0 loses 0.6 per appearance: 5, 4.4, 3.8 < 4 -> then token 1 (4), then 0 again (3.8 > 3.4)
    assert [s(logits) for _ in range(5)] == [0, 0, 1, 0, 1]
    assert np.array_equal(logits, [5.0, 4.0, 0.0])  # the caller's logits are untouched


def test_presence_penalty_is_once_per_token_and_ignores_the_prompt() -> None:
    logits = np.array([5.0, 4.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(greedy=True, repetition_penalty=1.0, presence_penalty=1.5), 3)
    s.observe([1])  # the prompt: OpenAI's penalties count generated tokens only
    assert [s(logits) for _ in range(4)] == [0, 1, 0, 0]  # 5 -> 3.5 once seen; 4 -> 2.5 once seen


@pytest.mark.parametrize("name", ["presence_penalty", "frequency_penalty"])
def test_penalties_are_bounded_like_openai(name: str) -> None:
    with pytest.raises(RequestError, match=name):
        SamplingParams(**{name: 2.5})  # type: ignore[arg-type]
