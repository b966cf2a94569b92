"""The official `openai` client talks to the agent unchanged: completions, chat (streaming
and not), images and models, over TCP and over the Unix socket."""

from __future__ import annotations

import base64
import struct

import httpx2 as httpx  # what this openai release uses (httpx under its new name)
import openai
import pytest

from tests.api.conftest import IMAGE_ID, TEXT_ID, Api


def tcp_client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="unused", max_retries=0)


def unix_client(api: Api) -> openai.OpenAI:
    transport = httpx.HTTPTransport(uds=str(api.socket))
    return openai.OpenAI(base_url="http://localhost/v1", api_key="unused", max_retries=0,
                         http_client=httpx.Client(transport=transport))


@pytest.fixture(params=["tcp", "unix"])
def client(request: pytest.FixtureRequest, api: Api) -> openai.OpenAI:
    return tcp_client(api) if request.param == "tcp" else unix_client(api)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_completion(client: openai.OpenAI) -> None:
    out = client.completions.create(model=TEXT_ID, prompt="It was a truth", max_tokens=8, seed=3, temperature=0.7)
    assert out.object == "text_completion" and out.model == TEXT_ID
    assert len(out.choices) == 1 and out.choices[0].finish_reason in ("length", "stop")
    assert out.usage is not None and out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = client.completions.create(model=TEXT_ID, prompt="It was a truth", max_tokens=8, seed=3, temperature=0.7)
    assert again.choices[0].text == out.choices[0].text  # same seed, same text


def test_completion_length_and_n(client: openai.OpenAI) -> None:
    out = client.completions.create(model=TEXT_ID, prompt="Emma", max_tokens=5, n=2, seed=1, temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1]
    for c in out.choices:
        assert c.finish_reason in ("length", "stop")
    assert out.usage is not None and out.usage.completion_tokens <= 10


def test_streamed_completion_equals_the_whole(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=TEXT_ID, prompt="Mr. Darcy", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=TEXT_ID, prompt="Mr. Darcy", max_tokens=12, temperature=0,
                                            stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_chat(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=TEXT_ID, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        max_tokens=6, seed=2)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant" and isinstance(out.choices[0].message.content, str)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about Bath"}]
    whole = client.chat.completions.create(model=TEXT_ID, messages=messages, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(model=TEXT_ID, messages=messages, max_tokens=10, temperature=0,  # type: ignore[arg-type]
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # OpenAI's usage chunk
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_image(client: openai.OpenAI) -> None:
    out = client.images.generate(model=IMAGE_ID, prompt="the digit 3", n=2, size="8x8",  # type: ignore[arg-type]
                                 response_format="b64_json")
    assert out.data is not None and len(out.data) == 2
    for image in out.data:
        assert image.b64_json is not None
        assert png_size(base64.b64decode(image.b64_json)) == (8, 8)


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [TEXT_ID, IMAGE_ID]
    assert client.models.retrieve(TEXT_ID).id == TEXT_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_errors_reach_the_client_as_openai_errors(api: Api) -> None:
    client = tcp_client(api)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="hi")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=TEXT_ID, prompt="hi", max_tokens=100000)
    assert bad.value.code == "context_length_exceeded" and bad.value.param == "max_tokens"
