"""Recipe: the shipped text model (`austen-3m`), from corpus to committed model folders.

Stages, each cached under models/build/text/ so a rerun picks up where it stopped:
corpus + tokenizer → training (checkpoint) → ONNX export → int8 / int4 variants →
held-out perplexity with ONNX Runtime → model folders with manifest and model card.

    python -m models.recipes.text_model train     # only the slow part (≤ 30 min)
    python -m models.recipes.text_model           # everything (trains if needed)
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from models.recipes.gpt import GPTConfig
from models.recipes.text_corpus import load_corpus
from models.recipes.text_tokenizer import encode_documents, save, train_tokenizer
from models.recipes.text_train import TrainConfig

log = logging.getLogger(__name__)

NAME = "austen-3m"
MODELS_DIR = Path(__file__).resolve().parents[1]
BUILD_DIR = MODELS_DIR / "build" / "text" / NAME
VOCAB_SIZE = 3072
MODEL_CONFIG = GPTConfig(vocab_size=VOCAB_SIZE, n_positions=256, n_embd=192, n_layer=5, n_head=4)
TRAIN_CONFIG = TrainConfig(max_steps=2400)


def prepare_data(build: Path = BUILD_DIR) -> tuple[Path, np.ndarray, np.ndarray, list[str]]:
    """Corpus → tokenizer.json (trained on the training split only) → id streams."""
    corpus = load_corpus(MODELS_DIR / "build" / "corpus")
    build.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(corpus.train, VOCAB_SIZE)
    tok_path = build / "tokenizer.json"
    save(tok, tok_path)
    return (
        tok_path,
        encode_documents(tok, corpus.train),
        encode_documents(tok, corpus.heldout),
        corpus.heldout,
    )


def _fingerprint() -> str:
    return json.dumps({"model": MODEL_CONFIG.to_dict(), "train": asdict(TRAIN_CONFIG)}, sort_keys=True)


def train_stage(build: Path = BUILD_DIR, force: bool = False) -> Path:
    """Train unless a checkpoint for the same configs exists; returns its path."""
    from models.recipes.text_train import save_checkpoint, train

    ckpt = build / "checkpoint.pt"
    stamp = build / "checkpoint.config.json"
    if not force and ckpt.is_file() and stamp.is_file() and stamp.read_text() == _fingerprint():
        log.info("reusing %s (same configs; --force retrains)", ckpt)
        return ckpt
    _, data, heldout, _ = prepare_data(build)
    model, result = train(MODEL_CONFIG, TRAIN_CONFIG, data, heldout)
    save_checkpoint(ckpt, model, result, TRAIN_CONFIG)
    stamp.write_text(_fingerprint())
    return ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", nargs="?", default="all", choices=["all", "train"])
    parser.add_argument("--force", action="store_true", help="retrain even if a checkpoint exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train_stage(force=args.force)
    if args.stage == "all":
        from models.recipes.text_package import build_all

        build_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
