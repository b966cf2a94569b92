"""Text generation on a decoder graph: prefill, then one token per step.

The graph's KV cache is driven by `KVDecoder` (the Optimum layout: past in, past + new out)
or `SharedKVDecoder` (GroupQueryAttention, past and present one buffer), as the folder
declares (`ModelInfo.kv_cache`); sampling, stop strings, streaming and pacing are the same.

`TextGenerator` owns one loaded model (session, tokenizer, KV buffers) and serves one
request at a time; `agent.runtime.service.GenerationQueue` serialises concurrent callers.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from agent.manifest import GenerationDefaults, TextSpec
from agent.runtime.decoder import DecoderLayout, KVDecoder, check_layout
from agent.runtime.detok import IncrementalDetokenizer, StopMatcher
from agent.runtime.engine import EngineOptions, open_engine
from agent.runtime.errors import ContextLengthError, ModelLoadError, RequestError
from agent.runtime.gqa import SharedKVDecoder
from agent.runtime.loader import ModelInfo
from agent.runtime.sampling import Sampler, SamplingParams

log = logging.getLogger(__name__)

FinishReason = Literal["eos", "stop", "length", "context", "cancelled"]
MAX_PROMPT_CHARS = 1_000_000


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always generate max_tokens

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise RequestError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"prompt of {len(self.prompt)} characters exceeds {MAX_PROMPT_CHARS}")
        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or not 1 <= self.max_tokens <= 65536
        ):
            raise RequestError(f"max_tokens must be in 1..65536, got {self.max_tokens!r}")
        if len(self.stop) > 8 or any(not isinstance(s, str) or not s or len(s) > 64 for s in self.stop):
            raise RequestError(f"stop must be at most 8 non-empty strings of <= 64 chars, got {self.stop!r}")


@dataclass(frozen=True)
class Timings:
    load_ms: float
    prefill_ms: float
    decode_ms: float
    prompt_tokens: int
    generated_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        # the first token comes out of prefill; decode is every token after it
        steps = self.generated_tokens - 1
        return steps / (self.decode_ms / 1000) if steps > 0 and self.decode_ms > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / (self.prefill_ms / 1000) if self.prefill_ms > 0 else 0.0


@dataclass(frozen=True)
class TextResult:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    seed: int
    timings: Timings
    # wall time between consecutive tokens (decode step + sampling + detokenization): its
    # median is a decode speed that other processes' bursts on a shared machine barely move
    step_ms: tuple[float, ...] = ()


class Tokenizer:
    """The few calls we need from a Hugging Face `tokenizers.Tokenizer`."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as e:
            raise ModelLoadError(f"cannot import tokenizers ({e})") from None
        if not path.is_file():
            raise ModelLoadError(f"tokenizer {path} does not exist")
        try:
            self._tok: Any = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ModelLoadError(f"cannot load tokenizer {path}: {str(e).splitlines()[0][:200]}") from None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))


class Pacer(Protocol):
    def pace_delay(self, step_s: float) -> float:
        """Seconds to sleep after a decode step that took `step_s`."""
        ...


class TextGenerator:
    def __init__(self, info: ModelInfo, engine: Any, load_ms: float = 0.0) -> None:
        if info.text is None or info.tokenizer_path is None:
            raise ModelLoadError(f"{info.name}: text generation needs a text spec and a tokenizer")
        session = getattr(engine, "session", None)
        if session is None:
            raise ModelLoadError(f"{info.name}: text generation needs engine onnxruntime, manifest says {info.engine}")
        self.info = info
        self.spec: TextSpec = info.text
        self.engine = engine
        self.tokenizer = Tokenizer(info.tokenizer_path)
        if self.tokenizer.vocab_size > self.spec.vocab_size:
            # ids past the embedding would fail inside the graph at the first such token
            raise ModelLoadError(
                f"{info.tokenizer_path}: tokenizer has {self.tokenizer.vocab_size} tokens, "
                f"the model's vocab is {self.spec.vocab_size} (not this model's tokenizer?)"
            )
        self.layout: DecoderLayout = check_layout(
            engine.inputs,
            engine.outputs,
            self.spec.num_layers,
            self.spec.num_kv_heads or self.spec.num_heads,
            self.spec.head_dim,
            self.spec.vocab_size,
            str(info.model_path),
        )
        self.decoder = self._decoder(session)
        eos = {self.spec.eos_token_id, *info.extra_eos_ids} - {None}
        self.eos_ids: frozenset[int] = frozenset(int(e) for e in eos if e is not None)
        self.load_ms = load_ms
        self.options = EngineOptions()  # what the session was built with (load_model sets it)
        self._lock = threading.Lock()
        # the power governor's pacing (firmware.knobs.RuntimeKnobs fits); None: full speed
        self.pacer: Pacer | None = None

    def _decoder(self, session: Any) -> KVDecoder | SharedKVDecoder:
        mapped = getattr(self.engine, "mapped", None)
        if self.info.kv_cache == "shared":
            return SharedKVDecoder(session, self.layout, self.spec.context_length, mapped)
        return KVDecoder(session, self.layout, self.spec.context_length, mapped)

    @property
    def defaults(self) -> GenerationDefaults:
        return self.info.generation

    def request(self, prompt: str, **overrides: Any) -> TextRequest:
        """A request with the model's defaults, overridden by the non-None keyword values."""
        d = self.defaults
        o = {k: v for k, v in overrides.items() if v is not None}
        sampling = SamplingParams(
            temperature=o.get("temperature", d.temperature),
            top_k=o.get("top_k", d.top_k),
            top_p=o.get("top_p", d.top_p),
            repetition_penalty=o.get("repetition_penalty", d.repetition_penalty),
            seed=o.get("seed"),
            greedy=bool(o.get("greedy", False)),
            presence_penalty=o.get("presence_penalty", 0.0),
            frequency_penalty=o.get("frequency_penalty", 0.0),
        )
        return TextRequest(
            prompt=prompt,
            max_tokens=o.get("max_tokens", d.max_tokens),
            sampling=sampling,
            stop=tuple(o.get("stop", d.stop)),
            ignore_eos=bool(o.get("ignore_eos", False)),
        )

    def encode_prompt(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        if not ids:
            start = self.spec.bos_token_id if self.spec.bos_token_id is not None else self.spec.eos_token_id
            if start is None:
                raise RequestError("prompt is empty and the model has no BOS/EOS token to start from")
            ids = [start]
        if len(ids) >= self.spec.context_length:
            raise ContextLengthError(
                f"prompt is {len(ids)} tokens, context is {self.spec.context_length} (no room for a new token)"
            )
        return ids

    def generate(
        self,
        request: TextRequest,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> TextResult:
        """Run one request; `on_text` receives the text as it becomes stable (streaming).

        The concatenation of what `on_text` receives is exactly `result.text`. `cancelled`
        is polled before each decode step (a client went away): generation then ends with
        finish_reason "cancelled" and the text so far. Concurrent callers are served one at
        a time (one KV cache); GenerationQueue adds ordering, streaming to other threads and
        the governor's knobs.
        """
        with self._lock:
            return self._generate(request, on_text, cancelled)

    def _generate(
        self,
        request: TextRequest,
        on_text: Callable[[str], None] | None,
        cancelled: Callable[[], bool] | None,
    ) -> TextResult:
        prompt_ids = self.encode_prompt(request.prompt)
        budget = min(request.max_tokens, self.spec.context_length - len(prompt_ids))
        sampler = Sampler(request.sampling, self.spec.vocab_size)
        sampler.observe(prompt_ids)
        detok = IncrementalDetokenizer(self.tokenizer.decode, prompt_ids)
        stops = StopMatcher(request.stop)
        pieces: list[str] = []

        def emit(text: str) -> None:
            if text:
                pieces.append(text)
                if on_text is not None:
                    on_text(text)

        self.decoder.reset(len(prompt_ids) + budget)
        t0 = time.perf_counter()
        logits = self.decoder.forward(prompt_ids)
        t1 = time.perf_counter()
        generated: list[int] = []
        token_at: list[float] = []
        finish: FinishReason = "length" if budget == request.max_tokens else "context"
        while True:
            token = sampler(logits)
            token_at.append(time.perf_counter())
            if token in self.eos_ids and not request.ignore_eos:
                finish = "eos"
                break
            generated.append(token)
            emit(stops.feed(detok.add(token)))
            if stops.stopped:
                finish = "stop"
                break
            if len(generated) >= budget:
                break
            if cancelled is not None and cancelled():
                finish = "cancelled"
                break
            step_start = time.perf_counter()
            logits = self.decoder.forward([token])
            if self.pacer is not None:
                delay = self.pacer.pace_delay(time.perf_counter() - step_start)
                if delay > 0:
                    time.sleep(delay)
        t2 = time.perf_counter()
        if not stops.stopped:
            emit(stops.feed(detok.flush()))
            emit(stops.flush())
            if stops.stopped:  # a stop string completed by the held-back tail
                finish = "stop"
        timings = Timings(
            load_ms=self.load_ms,
            prefill_ms=(t1 - t0) * 1000,
            decode_ms=(t2 - t1) * 1000,
            prompt_tokens=len(prompt_ids),
            generated_tokens=len(generated),
        )
        return TextResult(
            text="".join(pieces),
            token_ids=tuple(generated),
            finish_reason=finish,
            seed=sampler.seed,
            timings=timings,
            step_ms=tuple((b - a) * 1000 for a, b in itertools.pairwise(token_at)),
        )

    def reconfigure(self, options: EngineOptions) -> None:
        """Reload the session with new options (threads, providers), between requests.

        ONNX Runtime fixes its thread pool when a session is created, so the power governor
        turning the thread count costs one reload (about the load time of the model). The
        new session is checked before the old one is dropped; on failure the old one stays.
        """
        with self._lock:
            self._reconfigure(options)

    def _reconfigure(self, options: EngineOptions) -> None:
        if options.spin is None:  # keep the spinning decided at load (agent.runtime.spin)
            options = dataclasses.replace(options, spin=self.options.spin)
        engine = open_engine(self.info.engine, self.info.model_path, options)
        session = getattr(engine, "session", None)
        if session is None:
            engine.close()
            raise ModelLoadError(f"{self.info.name}: engine {self.info.engine} has no ORT session")
        self.decoder = self._decoder(session)
        old, self.engine = self.engine, engine
        old.close()
        self.options = options
        log.info("%s: reconfigured (threads %s)", self.info.name, options.threads or "default")

    def close(self) -> None:
        self.engine.close()
