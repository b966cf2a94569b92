"""Incremental detokenization (UTF-8 split across tokens, BPE merges) and stop strings."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.runtime.detok import IncrementalDetokenizer, StopMatcher
from agent.runtime.text import Tokenizer
from models.gpt2_onnx import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = Path(tmp_path_factory.mktemp("tok")) / "tokenizer.json"
    build_tokenizer(512).save(str(path))  # type: ignore[attr-defined]
    return Tokenizer(path)


def stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    d = IncrementalDetokenizer(tok.decode)
    chunks = [d.add(i) for i in ids]
    chunks.append(d.flush())
    return chunks


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii, with  spaces\nand lines",
        "naïve café — déjà vu",
        "日本語のテキスト and 中文",
        "emoji 🎉🚀 and flags 🇫🇷 mixed with text",
        "  leading spaces and trailing  ",
    ],
)
def test_streamed_text_equals_decoded_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert len(ids) > 3
    chunks = stream(tok, ids)
    assert "".join(chunks) == tok.decode(ids) == text
    # a multi-byte character split over tokens is never emitted half-done
    assert not any("\ufffd" in c for c in chunks)


def test_partial_character_is_held_back(tok: Tokenizer) -> None:
    ids = tok.encode("🎉")
    assert len(ids) >= 2, "byte-level BPE with a small vocab splits a 4-byte emoji"
    d = IncrementalDetokenizer(tok.decode)
    assert [d.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert d.add(ids[-1]) == "🎉"


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=511), max_size=40))
def test_any_id_sequence_streams_to_its_decoding(tok: Tokenizer, ids: list[int]) -> None:
    assert "".join(stream(tok, ids)) == tok.decode(ids)


def test_stop_string_across_chunks() -> None:
    m = StopMatcher(["</s>", "\n\n"])
    out = [m.feed("Hello <"), m.feed("/"), m.feed("s> ignored")]
    assert "".join(out) == "Hello "
    assert m.stopped and m.feed("more") == "" and m.flush() == ""


def test_held_text_released_when_no_stop_follows() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("abc ST") == "abc "
    assert m.feed("AR") == "STAR"
    assert m.feed("xS") == "x"
    assert m.flush() == "S"
    assert not m.stopped


def test_earliest_stop_wins() -> None:
    m = StopMatcher(["bb", "a"])
    assert m.feed("xxbbya") == "xx"


@settings(max_examples=1000, deadline=None)
@example(text="><<", stops=["<", "><<"], cuts=[2])  # a longer stop starting earlier wins
@given(
    text=st.text(alphabet="ab\n<>/", max_size=40),
    stops=st.lists(st.text(alphabet="ab\n<>/", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10),
)
def test_stop_matcher_equals_cutting_the_whole_text(text: str, stops: list[str], cuts: list[int]) -> None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    m = StopMatcher(stops)
    out = "".join(m.feed(text[a:b]) for a, b in itertools.pairwise(bounds)) + m.flush()
    assert out == expected
    assert m.stopped == bool(hits)


def test_sentencepiece_first_token_keeps_its_space_after_the_prompt(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    words = ["▁Once", "▁upon", "▁a", "▁time", "▁there", "▁was", "[UNK]"]
    hf = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(tmp_path / "tokenizer.json")
    prompt, new = tok.encode("Once upon a time"), tok.encode("there was")
    assert tok.decode(new[:1]) == "there"  # alone, the decoder drops the space
    d = IncrementalDetokenizer(tok.decode, prompt)
    streamed = "".join(d.add(i) for i in new) + d.flush()
    assert streamed == " there was"
    assert tok.decode(prompt) + streamed == tok.decode(prompt + new)
