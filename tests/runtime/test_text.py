"""Text generation on real ONNX Runtime: KV cache vs recompute, seeds, streaming, stops, limits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.runtime import TextGenerator, load_model
from agent.runtime.errors import ContextLengthError, RequestError
from agent.runtime.service import GenerationQueue
from tests.runtime.conftest import ONE_THREAD, shipped_text
from tests.runtime.reference import greedy_no_cache

PROMPT = "import os\nclass Foo:"


def test_greedy_with_kv_cache_equals_recompute(tiny: TextGenerator) -> None:
    result = tiny.generate(tiny.request(PROMPT, max_tokens=48, greedy=True, ignore_eos=True))
    expected = greedy_no_cache(tiny, tiny.encode_prompt(PROMPT), 48)
    assert list(result.token_ids) == expected
    assert len(set(expected)) > 5, "the test model must not be degenerate"


def test_greedy_kv_equals_recompute_int4(tiny_int4_dir: Path) -> None:
    # MatMulNBits quantizes activations row by row, so one token at a time gives the same
    # numbers as the whole sequence; int8 dynamic (one scale per tensor) does not (ADR 0012).
    gen = load_model(tiny_int4_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    result = gen.generate(gen.request(PROMPT, max_tokens=32, greedy=True, ignore_eos=True))
    assert list(result.token_ids) == greedy_no_cache(gen, gen.encode_prompt(PROMPT), 32)


# int8 is not exact by construction (one activation scale per step, ADR 0012)
@pytest.mark.parametrize("folder", shipped_text("fp32") + shipped_text("int4") or [None], ids=lambda p: p and p.name)
def test_shipped_model_greedy_kv_equals_recompute(folder: Path | None) -> None:
    if folder is None:
        pytest.fail("no shipped fp32/int4 text model under models/text (they are committed artifacts)")
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    prompt = "Once upon a time"
    result = gen.generate(gen.request(prompt, max_tokens=24, greedy=True, ignore_eos=True, repetition_penalty=1.0))
    assert list(result.token_ids) == greedy_no_cache(gen, gen.encode_prompt(prompt), 24)


@pytest.mark.parametrize("folder", shipped_text() or [None], ids=lambda p: p and p.name)
def test_shipped_model_variants_write_text(folder: Path | None) -> None:
    if folder is None:
        pytest.fail("no shipped text model under models/text (they are committed artifacts)")
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    result = gen.generate(gen.request("The house was", max_tokens=16, seed=1))
    assert result.timings.generated_tokens >= 1
    assert result.text.strip()


def test_same_seed_same_sample(tiny: TextGenerator) -> None:
    req = tiny.request(PROMPT, max_tokens=40, temperature=1.0, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    a, b = tiny.generate(req), tiny.generate(req)
    assert a.token_ids == b.token_ids and a.text == b.text and a.seed == 7
    c = tiny.generate(
        tiny.request(PROMPT, max_tokens=40, temperature=1.0, top_k=50, top_p=0.9, seed=8, ignore_eos=True)
    )
    assert c.token_ids != a.token_ids


def test_streaming_equals_non_streaming(tiny: TextGenerator) -> None:
    req = tiny.request(PROMPT, max_tokens=60, temperature=1.2, seed=3, ignore_eos=True)
    chunks: list[str] = []
    streamed = tiny.generate(req, on_text=chunks.append)
    plain = tiny.generate(req)
    assert "".join(chunks) == streamed.text == plain.text
    assert plain.text == tiny.tokenizer.decode(plain.token_ids)
    assert len(chunks) > 5
    assert not any(c.endswith("\ufffd") for c in chunks[:-1])


def test_stop_string_cuts_output(tiny: TextGenerator) -> None:
    full = tiny.generate(tiny.request(PROMPT, max_tokens=40, greedy=True, ignore_eos=True)).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = tiny.generate(tiny.request(PROMPT, max_tokens=40, greedy=True, ignore_eos=True, stop=[stop]))
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_eos_stops_and_is_not_emitted(tiny_dir: Path) -> None:
    gen = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    first = gen.generate(gen.request(PROMPT, max_tokens=3, greedy=True)).token_ids
    gen.eos_ids = frozenset({first[1]})
    result = gen.generate(gen.request(PROMPT, max_tokens=10, greedy=True))
    assert result.finish_reason == "eos"
    assert result.token_ids == first[:1]


def test_max_tokens_and_context_limit(tiny: TextGenerator) -> None:
    r = tiny.generate(tiny.request(PROMPT, max_tokens=5, greedy=True, ignore_eos=True))
    assert (r.finish_reason, r.timings.generated_tokens) == ("length", 5)
    ctx = tiny.spec.context_length
    prompt_ids = tiny.encode_prompt(PROMPT)
    r = tiny.generate(tiny.request(PROMPT, max_tokens=1000, greedy=True, ignore_eos=True))
    assert r.finish_reason == "context"
    assert r.timings.generated_tokens == ctx - len(prompt_ids)


def test_prompt_longer_than_context_is_refused_and_engine_survives(tiny: TextGenerator) -> None:
    with pytest.raises(ContextLengthError, match=r"prompt is \d+ tokens, context is 128"):
        tiny.generate(tiny.request("hello world " * 200))
    assert tiny.generate(tiny.request(PROMPT, max_tokens=3, greedy=True)).text


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("temperature", -0.5, "temperature must be in"),
        ("temperature", float("nan"), "temperature must be in"),
        ("top_p", 0.0, "top_p must be in"),
        ("top_p", 1.5, "top_p must be in"),
        ("top_k", -1, "top_k must be an integer"),
        ("repetition_penalty", 0.0, "repetition_penalty must be in"),
        ("seed", -3, "seed must be an integer"),
        ("max_tokens", 0, "max_tokens must be in"),
        ("stop", [""], "stop must be"),
    ],
)
def test_invalid_sampling_values(tiny: TextGenerator, key: str, value: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        tiny.request(PROMPT, **{key: value})


def test_queue_serves_concurrent_requests_one_model(tiny: TextGenerator) -> None:
    q = GenerationQueue(tiny)
    try:
        reqs = [tiny.request(PROMPT, max_tokens=20, seed=s, temperature=1.0, ignore_eos=True) for s in range(4)]
        expected = [tiny.generate(r).text for r in reqs]
        results: dict[int, str] = {}
        streams: dict[int, str] = {}

        def client(i: int) -> None:
            job = q.submit(reqs[i])
            streams[i] = "".join(job)
            results[i] = job.result(timeout=30).text

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        bad = q.submit(tiny.request("hello world " * 200))
        for t in threads:
            t.join(30)
        assert [results[i] for i in range(4)] == expected
        assert [streams[i] for i in range(4)] == expected
        with pytest.raises(ContextLengthError):
            bad.result(timeout=30)
        after = q.submit(reqs[0])
        assert after.result(timeout=30).text == expected[0]
    finally:
        q.close()


def test_queue_reconfigures_threads_between_requests(tiny_dir: Path) -> None:
    from agent.runtime import EngineOptions

    gen = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    q = GenerationQueue(gen)
    try:
        req = gen.request(PROMPT, max_tokens=12, greedy=True, ignore_eos=True)
        before = q.submit(req).result(timeout=30).token_ids
        q.reconfigure(EngineOptions(threads=2))
        assert gen.engine.session.get_session_options().intra_op_num_threads == 2
        assert q.submit(req).result(timeout=30).token_ids == before
    finally:
        q.close()


class FakeKnobs:
    def __init__(self) -> None:
        self.threads = 1
        self.admit = True
        self.steps: list[float] = []

    def pace_delay(self, step_s: float) -> float:
        self.steps.append(step_s)
        return 0.001


def test_queue_follows_the_governor_knobs(tiny_dir: Path) -> None:
    gen = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    knobs = FakeKnobs()
    q = GenerationQueue(gen, knobs=knobs)
    try:
        req = gen.request(PROMPT, max_tokens=10, greedy=True, ignore_eos=True)
        first = q.submit(req).result(timeout=30)
        assert len(knobs.steps) == 9  # one pacing call per decode step after prefill
        assert first.timings.decode_ms >= 9 * 1.0
        knobs.threads = 2
        assert q.submit(req).result(timeout=30).token_ids == first.token_ids
        assert gen.options.threads == 2
        knobs.admit = False
        held = q.submit(req)
        assert not held._done.wait(0.3)  # queued while the budget does not admit work
        knobs.admit = True
        assert held.result(timeout=30).token_ids == first.token_ids
    finally:
        q.close()


def test_grouped_kv_heads_llama_style_config(tmp_path: Path) -> None:
    from models.gpt2_onnx import TINY_GQA, write_optimum_folder

    folder = write_optimum_folder(tmp_path / "gqa", TINY_GQA, seed=1, init_scale=20)
    gen = load_model(folder, ONE_THREAD)
    assert isinstance(gen, TextGenerator)
    assert (gen.spec.num_heads, gen.spec.num_kv_heads, gen.layout.kv_heads) == (4, 2, 2)
    result = gen.generate(gen.request(PROMPT, max_tokens=32, greedy=True, ignore_eos=True))
    assert list(result.token_ids) == greedy_no_cache(gen, gen.encode_prompt(PROMPT), 32)
    assert len(set(result.token_ids)) > 5


def test_direct_concurrent_calls_are_serialised(tiny: TextGenerator) -> None:
    req = tiny.request(PROMPT, max_tokens=24, seed=5, temperature=1.0, ignore_eos=True)
    expected = tiny.generate(req).token_ids
    out: list[tuple[int, ...]] = []

    def call() -> None:
        out.append(tiny.generate(req).token_ids)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == [expected] * 4


class SlowKnobs(FakeKnobs):
    def pace_delay(self, step_s: float) -> float:
        return 0.01  # 100 steps take >= 1 s: time to cancel


def test_cancel_running_and_queued_jobs(tiny_dir: Path) -> None:
    tiny = load_model(tiny_dir, ONE_THREAD)
    assert isinstance(tiny, TextGenerator)
    q = GenerationQueue(tiny, knobs=SlowKnobs())
    try:
        running = q.submit(tiny.request(PROMPT, max_tokens=100, greedy=True, ignore_eos=True))
        queued = q.submit(tiny.request(PROMPT, max_tokens=5, greedy=True))
        queued.cancel()
        first = next(iter(running))  # it is generating
        running.cancel()
        result = running.result(timeout=30)
        assert first and result.finish_reason == "cancelled"
        assert result.timings.generated_tokens < 100
        with pytest.raises(RequestError, match="cancelled before it started"):
            queued.result(timeout=30)
        assert q.submit(tiny.request(PROMPT, max_tokens=3, greedy=True)).result(timeout=30).text
    finally:
        q.close()


def test_full_queue_raises_queue_full_and_listener_sees_every_chunk(tiny: TextGenerator) -> None:
    from agent.runtime.service import QueueFullError

    gate = threading.Event()

    class HeldKnobs(FakeKnobs):
        @property  # type: ignore[override]
        def admit(self) -> bool:
            return gate.is_set()

        @admit.setter
        def admit(self, value: bool) -> None:
            pass

    knobs = HeldKnobs()
    knobs.threads = tiny.options.threads or 1
    q = GenerationQueue(tiny, max_pending=1, knobs=knobs)
    try:
        wakes: list[int] = []
        req = tiny.request(PROMPT, max_tokens=8, greedy=True, ignore_eos=True)
        first = q.submit(req, listener=lambda: wakes.append(1))
        deadline = time.monotonic() + 30
        while q.depth and time.monotonic() < deadline:  # the worker took it and waits at the gate
            time.sleep(0.01)
        second = q.submit(req)
        with pytest.raises(QueueFullError, match="full"):
            q.submit(req)
        gate.set()
        text = first.result(timeout=30).text
        assert second.result(timeout=30).text == text
        assert "".join(first.drain()) == text and len(wakes) >= 2  # chunks, then the end
    finally:
        gate.set()
        q.close()
