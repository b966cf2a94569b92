"""docs/protocol-reference.md is generated from agent/protocol and must not go stale."""

from __future__ import annotations

import msgspec

from agent.protocol import docs, messages
from agent.protocol.topics import CHANNELS


def test_the_reference_is_what_the_generator_writes_now() -> None:
    assert docs.main(["--check"]) == 0, "run `python -m agent.protocol.docs` and commit docs/protocol-reference.md"


def test_every_channel_and_field_is_in_it() -> None:
    text = docs.render()
    for channel in CHANNELS:
        assert f"| `{channel.value}` |" in text
    for cls in (messages.Reported, messages.DesiredState, messages.Event, messages.Request):
        assert f"### {cls.__name__}" in text
        for name in cls.__struct_fields__:
            assert f"| `{msgspec.structs.fields(cls)[cls.__struct_fields__.index(name)].encode_name}` |" in text
