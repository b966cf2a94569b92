"""Byte-level BPE `tokenizer.json` (GPT-2 style) trained with the `tokenizers` library."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """GPT-2's scheme: bytes → 256 base symbols, merges learned on `texts`, EOS id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def eos_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(EOS)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOS!r} token")
    return int(token_id)


def encode_documents(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """One id stream: each document followed by EOS (as GPT-2 separates documents)."""
    eos = eos_id(tok)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


def save(tok: Tokenizer, path: Path) -> None:
    tok.save(str(path), pretty=False)
