"""Request and response documents of the OpenAI API subset, as OpenAI spells them.

Requests are decoded strictly (a string where an integer belongs is refused, naming the
field); unknown fields are ignored, as OpenAI-compatible servers do, except the ones we
know and cannot honour, which `refuse_unsupported` names. Responses are Structs whose
None fields encode as `null`, matching OpenAI's shapes (clients check `finish_reason`,
`logprobs`, `usage` for null).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from agent.api.errors import ApiError

_MISSING = re.compile(r"missing required field `([^`]+)`")


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    include_usage: bool = False


class _Sampling(msgspec.Struct, frozen=True, kw_only=True):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # extensions llama.cpp and Ollama accept too
    top_k: int | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    # known, not supported: refused when set to anything but their neutral value
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None


class CompletionRequest(_Sampling, frozen=True, kw_only=True):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ContentPart(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    text: str | None = None


class ChatMessageIn(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatRequest(_Sampling, frozen=True, kw_only=True):
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    response_format: Any = None
    top_logprobs: Any = None


class ImageRequestIn(msgspec.Struct, frozen=True, kw_only=True):
    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    seed: int | None = None  # extension: same seed, same image
    user: str | None = None
    quality: str | None = None
    style: str | None = None


def decode(body: bytes, kind: type[Any]) -> Any:
    """Decode a JSON body into `kind`; a 400 naming the field on failure."""
    if not body.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        text = str(e)
        message, sep, where = text.rpartition(" - at `$.")
        if sep:
            where = param = where.rstrip("`")
        else:
            message, where = text, ""
        missing = _MISSING.search(message)
        if missing:  # "Object missing required field `prompt`" (at the top level: no path)
            param = f"{where}.{missing.group(1)}" if where else missing.group(1)
            raise ApiError(400, f"{param}: required", param=param) from None
        if sep:
            raise ApiError(400, f"{param}: {message}", param=param) from None
        raise ApiError(400, text) from None
    except msgspec.DecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None


def refuse_unsupported(request: _Sampling) -> None:
    if request.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")
    if request.logprobs not in (None, False, 0):
        raise ApiError(400, "logprobs is not supported by this server", param="logprobs")
    if isinstance(request, CompletionRequest):
        if request.echo:
            raise ApiError(400, "echo is not supported by this server", param="echo")
        if request.suffix:
            raise ApiError(400, "suffix is not supported by this server", param="suffix")
        if request.best_of not in (None, 1):
            raise ApiError(400, "best_of is not supported by this server", param="best_of")
    if isinstance(request, ChatRequest):
        for name in ("tools", "functions", "top_logprobs"):
            if getattr(request, name) not in (None, [], 0):
                raise ApiError(400, f"{name} is not supported by this server", param=name)
        if request.tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice is not supported by this server", param="tool_choice")
        fmt = request.response_format
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise ApiError(400, "response_format other than text is not supported", param="response_format")


# -- responses ---------------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    index: int
    logprobs: None = None
    finish_reason: str | None


class CompletionChunk(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str  # "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None


class CompletionChunkWithUsage(CompletionChunk, frozen=True, kw_only=True):
    """With `stream_options.include_usage`: every chunk carries `usage` (null but the last)."""

    usage: Usage | None = None


class Completion(CompletionChunk, frozen=True, kw_only=True):
    usage: Usage


class ChatMessageOut(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    content: str
    refusal: None = None


class ChatChoice(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class ChatCompletion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str  # "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str  # "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None


class ChatChunkWithUsage(ChatChunk, frozen=True, kw_only=True):
    usage: Usage | None = None


class ImageData(msgspec.Struct, frozen=True, kw_only=True):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(msgspec.Struct, frozen=True, kw_only=True):
    created: int
    data: list[ImageData]


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "fleetgen"


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    data: list[ModelCard]
    object: str = "list"


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str  # "ok"
    models: list[str]
