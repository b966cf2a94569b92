"""Chat templates: the model's Jinja template rendered as transformers renders it (sandboxed),
or the documented default transcript."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.api.chat import DEFAULT, DEFAULT_STOPS, Message, load_template
from agent.api.errors import ApiError
from tests.api.conftest import TEXT, TEXT_ID, Api

CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if loop.first and message.role != 'system' and false %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
STRICT = (
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ message['content'] }}\n{% endfor %}"
)
MESSAGES = [Message("system", "Be brief."), Message("user", "Hello")]


def folder_with(tmp_path: Path, config: dict[str, Any]) -> Path:
    root = tmp_path / "model"
    root.mkdir(exist_ok=True)
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    return root


def test_default_template_is_a_transcript(tmp_path: Path) -> None:
    template = load_template(tmp_path)
    assert template is DEFAULT and template.stops == DEFAULT_STOPS
    assert template.render(MESSAGES) == "System: Be brief.\nUser: Hello\nAssistant:"


def test_model_template_renders_like_transformers(tmp_path: Path) -> None:
    root = folder_with(tmp_path, {"chat_template": CHATML, "bos_token": {"content": "<s>", "lstrip": False}})
    template = load_template(root)
    assert template.source == "tokenizer_config.json" and template.stops == ()
    assert template.render(MESSAGES) == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


def test_named_templates_use_default_and_jinja_file(tmp_path: Path) -> None:
    root = folder_with(tmp_path, {"chat_template": [{"name": "tool_use", "template": "T"},
                                                    {"name": "default", "template": "{{ messages[-1].content }}"}]})
    assert load_template(root).render(MESSAGES) == "Hello"
    (root / "tokenizer_config.json").write_text("{}")
    (root / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.role }}]{% endfor %}")
    assert load_template(root).render(MESSAGES) == "[system][user]"


def test_raise_exception_becomes_a_400_naming_messages(tmp_path: Path) -> None:
    template = load_template(folder_with(tmp_path, {"chat_template": STRICT}))
    with pytest.raises(ApiError) as e:
        template.render([Message("assistant", "Hi")])
    assert e.value.status == 400 and e.value.param == "messages" and "must alternate" in e.value.message


def test_the_sandbox_refuses_python_internals(tmp_path: Path) -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    template = load_template(folder_with(tmp_path, {"chat_template": evil}))
    with pytest.raises(ApiError) as e:
        template.render(MESSAGES)
    assert e.value.status == 400 and "chat template failed" in e.value.message


def test_the_api_uses_the_model_template(fresh_api: Any, tmp_path: Path) -> None:
    model = tmp_path / "with-template"
    shutil.copytree(TEXT, model)
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "bos_token": ""}))
    api: Api = fresh_api(folders=[model])
    rendered = load_template(model).render([Message("user", "Hello")])
    with api.client() as c:
        chat = c.post("/v1/chat/completions", json={"model": TEXT_ID, "max_tokens": 1,
                                                    "messages": [{"role": "user", "content": "Hello"}]}).json()
        plain = c.post("/v1/completions", json={"model": TEXT_ID, "prompt": rendered, "max_tokens": 1}).json()
    assert chat["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    default = DEFAULT.render([Message("user", "Hello")])
    with api.client() as c:
        other = c.post("/v1/completions", json={"model": TEXT_ID, "prompt": default, "max_tokens": 1}).json()
    assert other["usage"]["prompt_tokens"] != chat["usage"]["prompt_tokens"]  # not the default transcript
