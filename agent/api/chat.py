"""Chat messages -> one prompt: the model's chat template, or fleetgen's default.

A model folder's `tokenizer_config.json` may carry `chat_template` (a Jinja template, or a
list of named ones, of which "default" is used), or the folder a `chat_template.jinja`.
It is rendered as Hugging Face transformers renders it (`apply_chat_template`): an
immutable Jinja sandbox with `trim_blocks` and `lstrip_blocks`, the `loopcontrols`
extension, `raise_exception`, `strftime_now` and a `tojson` filter, with `messages`,
`add_generation_prompt=True` and the special tokens (`bos_token`, `eos_token`, ...) as
variables. A template cannot reach Python internals or the file system (the sandbox).

Models without a template (the shipped austen-3m is a plain prose model) get the
default, a transcript that a base model continues naturally:

    System: You are terse.
    User: Hello
    Assistant:

with stop strings at the next turn ("\\nUser:", "\\nSystem:") so the reply ends there.
jinja2 is imported only when a model has a template.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.api.errors import ApiError

log = logging.getLogger(__name__)

DEFAULT_STOPS = ("\nUser:", "\nSystem:")
_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "developer": "System", "tool": "Tool"}
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # "tokenizer_config.json", "chat_template.jinja" or "default"
    stops: tuple[str, ...]
    _render: Callable[[Sequence[Message]], str]

    def render(self, messages: Sequence[Message]) -> str:
        return self._render(messages)


def render_default(messages: Sequence[Message]) -> str:
    lines = [f"{_ROLES.get(m.role, m.role.capitalize())}: {m.content}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


DEFAULT = ChatTemplate("default", DEFAULT_STOPS, render_default)


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _pick(template: Any) -> str | None:
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def load_template(root: Path) -> ChatTemplate:
    """The chat template of the model folder `root` (DEFAULT when it has none)."""
    config: dict[str, Any] = {}
    path = root / "tokenizer_config.json"
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s); using the default chat template", path, e)
    source, text = "tokenizer_config.json", _pick(config.get("chat_template"))
    jinja_file = root / "chat_template.jinja"
    if text is None and jinja_file.is_file():
        source, text = "chat_template.jinja", jinja_file.read_text(encoding="utf-8")
    if text is None:
        return DEFAULT
    special = {k: t for k in _SPECIAL if (t := _token_text(config.get(k))) is not None}
    return ChatTemplate(source, (), _jinja_renderer(text, special, str(root / source)))


class _TemplateRaised(Exception):
    pass


def _jinja_renderer(text: str, special: dict[str, str], origin: str) -> Callable[[Sequence[Message]], str]:
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # the model has a template but the install lacks jinja2
        raise ApiError(500, f"{origin}: chat template needs jinja2 ({e})") from None

    def raise_exception(message: str) -> None:
        raise _TemplateRaised(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        compiled = env.from_string(text)
    except jinja2.TemplateError as e:
        log.warning("%s: chat template does not compile (%s); using the default", origin, e)
        return render_default

    def render(messages: Sequence[Message]) -> str:
        docs = [{"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in messages]
        try:
            return str(compiled.render(messages=docs, add_generation_prompt=True, tools=None, documents=None,
                                       **special))
        except _TemplateRaised as e:
            raise ApiError(400, f"messages: {e}", param="messages") from None
        except jinja2.TemplateError as e:  # the sandbox refused something, or the template is wrong
            raise ApiError(400, f"messages: the model's chat template failed: {e}", param="messages") from None

    return render
