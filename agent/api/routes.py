"""The API's routes: OpenAI's completions, chat completions, images and models, plus
/health, /metrics (opt-in) and /fleetgen/status (the daemon's state, for `status`).

Every refusal is an `ApiError` in OpenAI's error shape naming the field; a failure while
generating fails that request alone. Streams are server-sent events with OpenAI's chunk
shapes and a final `data: [DONE]`; a client that goes away mid-generation cancels it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from agent import __version__
from agent.api import wire
from agent.api.chat import Message
from agent.api.errors import ApiError
from agent.api.host import ModelHost, ServedModel
from agent.api.http import Request, Response, StreamResponse
from agent.api.metrics import ApiMetrics
from agent.errors import FleetgenError

if TYPE_CHECKING:
    from agent.runtime.service import Job
    from agent.runtime.text import TextRequest, TextResult

log = logging.getLogger(__name__)

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "cancelled": "stop"}
MAX_N = 8
MAX_STOP = 4  # OpenAI's limit
FINGERPRINT = f"fleetgen-{__version__}"
_PARAM_IN_MESSAGE = re.compile(r"^([a-z_]+) must ")

StatusProvider = Callable[[], msgspec.Struct]


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class _Prepared:
    request: TextRequest
    prompt_tokens: int


def _json(status: int, doc: msgspec.Struct, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, msgspec.json.encode(doc), headers=headers)


def _sse(doc: msgspec.Struct) -> bytes:
    return b"data: " + msgspec.json.encode(doc) + b"\n\n"


_DONE_EVENT = b"data: [DONE]\n\n"


class Routes:
    def __init__(
        self,
        host: ModelHost,
        metrics: ApiMetrics | None = None,
        *,
        api_key: str | None = None,
        metrics_enabled: bool = False,
        status: StatusProvider | None = None,
        clock: Callable[[], float] = time.time,
        stream_interval_s: float = 0.0,
    ) -> None:
        self.host = host
        self.stream_interval_s = stream_interval_s
        self.metrics = metrics or ApiMetrics()
        self.api_key = api_key
        self.metrics_enabled = metrics_enabled
        self.status = status
        self.clock = clock
        self._table: dict[tuple[str, str], tuple[str, Callable[[Request], Awaitable[Response | StreamResponse]]]] = {
            ("POST", "/v1/completions"): ("completions", self.completions),
            ("POST", "/v1/chat/completions"): ("chat", self.chat),
            ("POST", "/v1/images/generations"): ("images", self.images),
            ("GET", "/v1/models"): ("models", self.list_models),
            ("GET", "/health"): ("health", self.health),
            ("GET", "/metrics"): ("metrics", self.prometheus),
            ("GET", "/fleetgen/status"): ("status", self.status_route),
        }

    # -- dispatch -----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response | StreamResponse:
        started = time.perf_counter()
        path = request.path.rstrip("/") or "/"
        entry = self._table.get((request.method, path))
        route = entry[0] if entry else ("models" if path.startswith("/v1/models/") else "other")
        self.metrics.in_flight += 1
        streaming = False
        status = 500
        try:
            if route != "health":
                self._authorize(request)
            if entry is None:
                response: Response | StreamResponse = await self._unrouted(request, path)
            else:
                response = await entry[1](request)
            status = response.status
            if isinstance(response, StreamResponse):
                streaming = True
                return StreamResponse(response.status, self._finish_stream(response.chunks, route, started),
                                      response.content_type, response.headers)
            return response
        except ApiError as e:
            status = e.status
            if e.status >= 500:
                log.warning("%s %s: %d %s", request.method, path, e.status, e.message)
            headers = (("retry-after", str(e.retry_after_s)),) if e.retry_after_s is not None else ()
            if e.status == 401:
                headers = (*headers, ("www-authenticate", "Bearer"))
            return Response(e.status, e.body(), headers=headers)
        except _ClientGone:
            status = 499  # nginx's "client closed request": nobody reads this answer
            return Response(499, b"")
        finally:
            if not streaming:
                self.metrics.in_flight -= 1
                self.metrics.request_done(route, status, (time.perf_counter() - started) * 1000)

    async def _finish_stream(self, chunks: AsyncGenerator[bytes, None], route: str,
                             started: float) -> AsyncGenerator[bytes, None]:
        status = 200
        try:
            async for chunk in chunks:
                yield chunk
        except BaseException:
            status = 499
            raise
        finally:
            await _aclose(chunks)
            self.metrics.in_flight -= 1
            self.metrics.request_done(route, status, (time.perf_counter() - started) * 1000)

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send Authorization: Bearer KEY", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key")

    async def _unrouted(self, request: Request, path: str) -> Response:
        if request.method == "GET" and path.startswith("/v1/models/"):
            return await self.get_model(path.removeprefix("/v1/models/"))
        if any(p == path for _, p in self._table):
            raise ApiError(405, f"{request.method} is not allowed on {path}")
        raise ApiError(404, f"no route {request.method} {path}", code="not_found")

    # -- models, health, metrics, status ------------------------------------------------

    def _card(self, m: ServedModel) -> wire.ModelCard:
        return wire.ModelCard(id=m.id, created=m.created)

    async def list_models(self, request: Request) -> Response:
        return _json(200, wire.ModelList(data=[self._card(m) for m in self.host.models]))

    async def get_model(self, name: str) -> Response:
        for m in self.host.models:
            if name in m.aliases:
                return _json(200, self._card(m))
        raise ApiError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")

    async def health(self, request: Request) -> Response:
        if not self.host.ready:
            state = self.host.state
            message = "Loading model" if state in ("loading", "switching") else f"model not ready: {self.host.detail}"
            raise ApiError(503, message, code=f"model_{state}" if state != "empty" else "no_model",
                           retry_after_s=1)
        return _json(200, wire.Health(status="ok", models=[m.id for m in self.host.models]))

    async def prometheus(self, request: Request) -> Response:
        if not self.metrics_enabled:
            raise ApiError(404, "metrics are off (enable them with [api] metrics = true or --metrics)",
                           code="not_found")
        text = self.metrics.prometheus(self.host.depth, self.host.ready)
        return Response(200, text.encode(), content_type="text/plain; version=0.0.4")

    async def status_route(self, request: Request) -> Response:
        if self.status is None:
            raise ApiError(404, "no daemon status here (this is `fleetgen-agent serve`)", code="not_found")
        return _json(200, self.status())

    # -- text ---------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response | StreamResponse:
        body: wire.CompletionRequest = wire.decode(request.body, wire.CompletionRequest)
        wire.refuse_unsupported(body)
        model = await self.host.acquire(body.model, "text")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt: must not be an empty list", param="prompt")
        n = _check_n(body.n)
        if len(prompts) * n > MAX_N:
            raise ApiError(400, f"n x prompts must be at most {MAX_N}", param="n")
        prepared = [await self._prepare(model, p, body, (), body.max_tokens, "prompt", i)
                    for p in prompts for i in range(n)]
        ident, created = f"cmpl-{secrets.token_hex(12)}", int(self.clock())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            chunks = self._stream_completion(model, prepared, request.disconnected, ident, created, include_usage)
            return StreamResponse(200, chunks)
        choices: list[wire.CompletionChoice] = []
        results = []
        for index, prep in enumerate(prepared):
            result = await self._collect(model, prep, request.disconnected)
            results.append((prep, result))
            choices.append(wire.CompletionChoice(text=result.text, index=index,
                                                 finish_reason=FINISH[result.finish_reason]))
        return _json(200, wire.Completion(id=ident, object="text_completion", created=created, model=model.id,
                                          choices=choices, system_fingerprint=FINGERPRINT,
                                          usage=_usage(results)))

    async def chat(self, request: Request) -> Response | StreamResponse:
        body: wire.ChatRequest = wire.decode(request.body, wire.ChatRequest)
        wire.refuse_unsupported(body)
        if not body.messages:
            raise ApiError(400, "messages: must hold at least one message", param="messages")
        model = await self.host.acquire(body.model, "text")
        assert model.chat is not None
        messages = [Message(m.role, _content(m, i), m.name) for i, m in enumerate(body.messages)]
        prompt = model.chat.render(messages)
        n = _check_n(body.n)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        prepared = [await self._prepare(model, prompt, body, model.chat.stops, max_tokens, "messages", i, param)
                    for i in range(n)]
        ident, created = f"chatcmpl-{secrets.token_hex(12)}", int(self.clock())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamResponse(200, self._stream_chat(model, prepared, request.disconnected, ident, created,
                                                         include_usage))
        choices: list[wire.ChatChoice] = []
        results = []
        for index, prep in enumerate(prepared):
            result = await self._collect(model, prep, request.disconnected)
            results.append((prep, result))
            choices.append(wire.ChatChoice(index=index, message=wire.ChatMessageOut(role="assistant",
                                                                                    content=result.text),
                                           finish_reason=FINISH[result.finish_reason]))
        return _json(200, wire.ChatCompletion(id=ident, object="chat.completion", created=created, model=model.id,
                                              choices=choices, usage=_usage(results),
                                              system_fingerprint=FINGERPRINT))

    async def _prepare(self, model: ServedModel, prompt: str, body: wire.ChatRequest | wire.CompletionRequest,
                       extra_stops: Sequence[str], max_tokens: int | None, prompt_param: str, index: int,
                       max_param: str = "max_tokens") -> _Prepared:
        from agent.runtime.errors import ContextLengthError, RequestError

        gen = model.text
        context = gen.spec.context_length
        try:
            ids = await asyncio.to_thread(gen.encode_prompt, prompt)
        except ContextLengthError as e:
            raise ApiError(400, f"{prompt_param}: {e}", param=prompt_param, code="context_length_exceeded") from None
        except RequestError as e:
            raise ApiError(400, f"{prompt_param}: {e}", param=prompt_param) from None
        if max_tokens is not None:
            if max_tokens <= 0:
                raise ApiError(400, f"{max_param} must be at least 1, got {max_tokens}", param=max_param)
            if len(ids) + max_tokens > context:
                raise ApiError(400, f"{max_param}: the prompt is {len(ids)} tokens and {max_tokens} more were "
                               f"asked for; the model's context is {context}", param=max_param,
                               code="context_length_exceeded")
        else:
            max_tokens = min(gen.defaults.max_tokens, context - len(ids))
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"stop: at most {MAX_STOP} sequences, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop: sequences must not be empty", param="stop")
        seed = body.seed + index if body.seed is not None and body.seed >= 0 else body.seed
        try:
            request = gen.request(
                prompt, max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                repetition_penalty=body.repetition_penalty, seed=seed,
                stop=[*stops, *extra_stops] if (stops or extra_stops) else None,
                presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                ignore_eos=body.ignore_eos,
            )
        except RequestError as e:
            match = _PARAM_IN_MESSAGE.match(str(e))
            param = match.group(1) if match else None
            raise ApiError(400, str(e), param=param) from None
        return _Prepared(request, len(ids))

    async def _run(self, model: ServedModel, prep: _Prepared, gone: asyncio.Event,
                   on_text: Callable[[str], Awaitable[None]] | None) -> TextResult:
        """Submit one generation and relay its text to `on_text` as it comes (None: only the
        result is wanted, and the loop wakes once, at the end).

        The worker thread wakes this coroutine through the loop (no thread per request), and
        only when it is waiting: while a chunk is sent and for `stream_interval_s` after it,
        tokens gather in the job and the worker pays one flag check per token. The first
        token goes out at once; a fast model sends one chunk per interval, a slow one (a
        token per interval or slower) a chunk per token (ADR 0061). A client that
        disconnects cancels the job (counted); so does this coroutine being cancelled or
        closed (a stream the server gave up on)."""
        from agent.runtime.errors import RequestError
        from agent.runtime.service import QueueFullError

        assert model.queue is not None
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        # set while this coroutine waits for text: the next chunk wakes it (one call_soon_threadsafe
        # and self-pipe write), the ones after it do not until it waits again
        armed = threading.Event()
        submitted_job: list[Job] = []

        def listener() -> None:  # on the worker thread, after each chunk and at the end
            if armed.is_set() or (submitted_job and submitted_job[0].done):
                armed.clear()
                # RuntimeError: the loop is gone (shutdown); the job is being cancelled anyway
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(wake.set)

        try:
            job = model.queue.submit(prep.request, listener)
        except QueueFullError as e:
            raise ApiError(429, f"{e}; retry later", code="queue_full", retry_after_s=self._retry_after(model)) \
                from None
        except RequestError as e:
            raise ApiError(503, str(e), code="unavailable", retry_after_s=1) from None
        submitted_job.append(job)
        submitted = time.perf_counter()
        first: float | None = None
        interval = self.stream_interval_s

        async def relay() -> None:
            await gone.wait()
            wake.set()

        watcher = asyncio.create_task(relay())
        finished = False
        try:
            while True:
                if on_text is None:
                    if not job.done and not gone.is_set():
                        await wake.wait()  # the end (or the client leaving) sets it
                elif not job.has_output() and not gone.is_set():
                    armed.set()
                    if not job.has_output():  # checked again after arming: no wake-up is lost
                        await wake.wait()
                    armed.clear()
                wake.clear()
                if gone.is_set():
                    raise _ClientGone
                done = job.done  # read before draining: every chunk precedes `done`
                pieces = job.drain()
                if pieces and first is None and on_text is not None:
                    first = time.perf_counter()
                    self.metrics.first_token((first - submitted) * 1000)
                if pieces and on_text is not None:
                    await on_text("".join(pieces))
                    if not done and interval > 0:
                        # tokens gather meanwhile; the end of the job or the client leaving cut it
                        # short (a timer that sets the event: no cancellation, no exception)
                        timer = loop.call_later(interval, wake.set)
                        await wake.wait()
                        timer.cancel()
                        wake.clear()  # what follows checks the job and `gone` itself
                if done:
                    break
            try:
                result = job.result(0)
            except FleetgenError as e:
                raise _as_api_error(e) from None
            finished = True
            latency_ms = (time.perf_counter() - submitted) * 1000
            t = result.timings
            if first is None and t.generated_tokens:  # not streamed: woken once, at the end
                self.metrics.first_token(max(0.0, latency_ms - t.decode_ms))
            self.metrics.generation_done(t.prompt_tokens, t.generated_tokens, (t.prefill_ms + t.decode_ms) / 1000,
                                         latency_ms)
            return result
        finally:
            watcher.cancel()
            if not finished and not job.done:
                job.cancel()
                self.metrics.disconnected()
                log.info("client went away: generation cancelled")

    async def _collect(self, model: ServedModel, prep: _Prepared, gone: asyncio.Event) -> TextResult:
        return await self._run(model, prep, gone, None)

    def _retry_after(self, model: ServedModel) -> int:
        p50 = self.metrics.snapshot().latency_ms_p50 or 1000.0
        return max(1, min(60, math.ceil(p50 / 1000 * max(1, model.depth))))

    async def _stream(self, model: ServedModel, prepared: list[_Prepared], gone: asyncio.Event,
                      frame: Callable[[int, str | None, str | None], msgspec.Struct],
                      usage_frame: Callable[[wire.Usage], msgspec.Struct] | None,
                      opening: Callable[[int], msgspec.Struct] | None) -> AsyncGenerator[bytes, None]:
        """One SSE stream over the choices (generated one after the other, each tagged by index)."""
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        results: list[tuple[_Prepared, TextResult]] = []

        async def produce() -> None:
            try:
                for index, prep in enumerate(prepared):
                    if opening is not None:
                        out.put_nowait(_sse(opening(index)))

                    async def send(text: str, index: int = index) -> None:
                        out.put_nowait(_sse(frame(index, text, None)))

                    result = await self._run(model, prep, gone, send)
                    results.append((prep, result))
                    out.put_nowait(_sse(frame(index, None, FINISH[result.finish_reason])))
                if usage_frame is not None:
                    out.put_nowait(_sse(usage_frame(_usage(results))))
            except ApiError as e:  # mid-stream failure: OpenAI sends an error event, then ends
                out.put_nowait(b"data: " + e.body() + b"\n\n")
            except _ClientGone:
                pass
            finally:
                out.put_nowait(None)

        producer = asyncio.create_task(produce())
        try:
            while (chunk := await out.get()) is not None:
                yield chunk
            if not gone.is_set():
                yield _DONE_EVENT
        finally:
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, _ClientGone):
                await producer

    def _stream_completion(self, model: ServedModel, prepared: list[_Prepared], gone: asyncio.Event, ident: str,
                           created: int, include_usage: bool) -> AsyncGenerator[bytes, None]:
        chunk_type = wire.CompletionChunkWithUsage if include_usage else wire.CompletionChunk

        def frame(index: int, text: str | None, finish: str | None) -> msgspec.Struct:
            choice = wire.CompletionChoice(text=text or "", index=index, finish_reason=finish)
            return chunk_type(id=ident, object="text_completion", created=created, model=model.id,
                              choices=[choice], system_fingerprint=FINGERPRINT)

        def usage_frame(usage: wire.Usage) -> msgspec.Struct:
            return wire.CompletionChunkWithUsage(id=ident, object="text_completion", created=created,
                                                 model=model.id, choices=[], system_fingerprint=FINGERPRINT,
                                                 usage=usage)

        return self._stream(model, prepared, gone, frame, usage_frame if include_usage else None, None)

    def _stream_chat(self, model: ServedModel, prepared: list[_Prepared], gone: asyncio.Event, ident: str,
                     created: int, include_usage: bool) -> AsyncGenerator[bytes, None]:
        chunk_type = wire.ChatChunkWithUsage if include_usage else wire.ChatChunk

        def chunk(index: int, delta: wire.Delta, finish: str | None) -> msgspec.Struct:
            return chunk_type(id=ident, object="chat.completion.chunk", created=created, model=model.id,
                              choices=[wire.ChunkChoice(index=index, delta=delta, finish_reason=finish)],
                              system_fingerprint=FINGERPRINT)

        def frame(index: int, text: str | None, finish: str | None) -> msgspec.Struct:
            return chunk(index, wire.Delta(content=text) if text is not None else wire.Delta(), finish)

        def opening(index: int) -> msgspec.Struct:
            return chunk(index, wire.Delta(role="assistant", content=""), None)

        def usage_frame(usage: wire.Usage) -> msgspec.Struct:
            return wire.ChatChunkWithUsage(id=ident, object="chat.completion.chunk", created=created,
                                           model=model.id, choices=[], system_fingerprint=FINGERPRINT, usage=usage)

        return self._stream(model, prepared, gone, frame, usage_frame if include_usage else None, opening)

    # -- images -------------------------------------------------------------------------

    async def images(self, request: Request) -> Response:
        from agent.runtime.image import ImageRequest
        from agent.runtime.service import QueueFullError

        body: wire.ImageRequestIn = wire.decode(request.body, wire.ImageRequestIn)
        model = await self.host.acquire(body.model, "image")
        from agent.runtime.image import ImageGenerator

        generator = model.generator
        assert isinstance(generator, ImageGenerator)  # acquire(..., "image") gave an image model
        spec = generator.spec
        size = f"{spec.width}x{spec.height}"
        if body.size is not None and body.size not in (size, "auto"):
            raise ApiError(400, f"size: {body.model or model.id} makes {size} images only, got {body.size!r}",
                           param="size")
        if body.response_format not in (None, "b64_json"):
            raise ApiError(400, f"response_format: only b64_json is served (no URLs offline), got "
                           f"{body.response_format!r}", param="response_format")
        n = body.n
        if not 1 <= n <= 4:
            raise ApiError(400, f"n must be in 1..4, got {n}", param="n")
        class_id = _class_from_prompt(body.prompt, spec.num_classes)
        data: list[wire.ImageData] = []
        for i in range(n):
            seed = body.seed + i if body.seed is not None and body.seed >= 0 else body.seed
            try:
                result = await model.generate_image(ImageRequest(class_id=class_id, seed=seed))
            except QueueFullError as e:
                raise ApiError(429, f"{e}; retry later", code="queue_full", retry_after_s=1) from None
            except FleetgenError as e:
                raise _as_api_error(e) from None
            data.append(wire.ImageData(b64_json=base64.b64encode(result.png).decode("ascii")))
        return _json(200, wire.ImagesResponse(created=int(self.clock()), data=data))


def _check_n(n: int) -> int:
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"n must be in 1..{MAX_N}, got {n}", param="n")
    return n


def _content(message: wire.ChatMessageIn, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{index}].content: only text parts are supported, got {part.type!r}",
                           param=f"messages[{index}].content")
        texts.append(part.text)
    return "".join(texts)


def _class_from_prompt(prompt: str, num_classes: int) -> int | None:
    """Class-conditional generators take the class from the first number in the prompt."""
    if num_classes == 0:
        return None
    match = re.search(r"\d+", prompt)
    if match is None:
        raise ApiError(400, f"prompt: name the class to draw as a number in 0..{num_classes - 1} "
                       f"(e.g. \"3\"), got {prompt[:80]!r}", param="prompt")
    class_id = int(match.group())
    if not 0 <= class_id < num_classes:
        raise ApiError(400, f"prompt: class {class_id} is outside 0..{num_classes - 1}", param="prompt")
    return class_id


def _usage(results: Sequence[tuple[_Prepared, TextResult]]) -> wire.Usage:
    # n choices of one prompt count the prompt once, as OpenAI does
    prompts: dict[str, int] = {}
    for prep, _ in results:
        prompts[prep.request.prompt] = prep.prompt_tokens
    prompt_tokens = sum(prompts.values())
    completion = sum(r.timings.generated_tokens for _, r in results)
    return wire.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                      total_tokens=prompt_tokens + completion)


def _as_api_error(e: FleetgenError) -> ApiError:
    from agent.runtime.errors import RequestError

    if isinstance(e, ApiError):
        return e
    if isinstance(e, RequestError):
        return ApiError(400, str(e))
    return ApiError(500, f"generation failed: {e}", code="server_error")


async def _aclose(it: AsyncIterator[Any]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
