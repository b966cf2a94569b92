"""Text model folders: export the trained checkpoint (fp32), quantize it (int8, int4),
measure held-out perplexity with ONNX Runtime, write manifest.json and MODEL_CARD.md."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from agent.manifest import (
    GenerationDefaults,
    ModelManifest,
    SelfTest,
    TextSpec,
    file_entries,
    write_manifest,
)
from models.quantize import quantize_int4, quantize_int8
from models.recipes import ort_check
from models.recipes.text_corpus import CORPUS_LICENSE, CORPUS_NAME, DEB_PACKAGE
from models.recipes.text_export import export_onnx, generation_config, hf_config, write_json
from models.recipes.text_model import BUILD_DIR, MODELS_DIR, NAME, prepare_data
from models.recipes.text_tokenizer import eos_id
from models.recipes.text_train import TrainResult, load_checkpoint

log = logging.getLogger(__name__)

VERSION = "1.0.0"
PROMPT = "Tell me a story about summer"
NARRATIVE_PROMPT = "It was a fine summer morning, and"
LICENSE = "MIT (weights, fleetgen); training text public domain (Jane Austen)"
TEXT_DIR = MODELS_DIR / "text"
SAMPLE_SEEDS = (1, 2)
MAX_NEW = 60


@dataclass(frozen=True)
class Variant:
    suffix: str
    quantization: str

    @property
    def name(self) -> str:
        return NAME + self.suffix


VARIANTS = (Variant("", "fp32"), Variant("-int8", "int8"), Variant("-int4", "int4"))


@dataclass(frozen=True)
class Quality:
    perplexity: float
    model_bytes: int
    greedy: str
    samples: list[str]
    cache_matches_recompute: bool


def _evaluate(model: Path, tok: Tokenizer, heldout_ids: np.ndarray, window: int) -> Quality:
    sess = ort_check.session(model)
    prompt = tok.encode(PROMPT).ids
    eos = eos_id(tok)
    greedy = ort_check.greedy_cached(sess, prompt, MAX_NEW)
    if eos in greedy:
        greedy = greedy[: greedy.index(eos)]
    full = ort_check.greedy_full(sess, prompt, 24)
    cached = ort_check.greedy_cached(sess, prompt, 24)
    samples = [
        text + tok.decode(ort_check.sample_cached(sess, tok.encode(text).ids, MAX_NEW, eos, seed))
        for text in (PROMPT, NARRATIVE_PROMPT)
        for seed in SAMPLE_SEEDS
    ]
    return Quality(
        perplexity=round(ort_check.perplexity(sess, heldout_ids, window), 2),
        model_bytes=model.stat().st_size,
        greedy=tok.decode(greedy),
        samples=samples,
        cache_matches_recompute=full == cached,
    )


def build_all(checkpoint: Path = BUILD_DIR / "checkpoint.pt") -> dict[str, Quality]:
    model, result, train_cfg = load_checkpoint(checkpoint)
    tok_path, train_ids, heldout_ids, _ = prepare_data(BUILD_DIR)
    tok = Tokenizer.from_file(str(tok_path))
    eos = eos_id(tok)
    cfg = model.cfg
    fp32_dir = TEXT_DIR / NAME
    fp32_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(model, fp32_dir / "model.onnx")
    quality: dict[str, Quality] = {}
    for variant in VARIANTS:
        folder = TEXT_DIR / variant.name
        folder.mkdir(parents=True, exist_ok=True)
        if variant.quantization == "int8":
            quantize_int8(fp32_dir / "model.onnx", folder / "model.onnx")
        elif variant.quantization == "int4":
            quantize_int4(fp32_dir / "model.onnx", folder / "model.onnx")
        shutil.copyfile(tok_path, folder / "tokenizer.json")
        write_json(folder / "config.json", hf_config(model, eos, eos))
        write_json(folder / "generation_config.json", generation_config(eos, eos, 128))
        quality[variant.quantization] = _evaluate(
            folder / "model.onnx", tok, heldout_ids, cfg.n_positions
        )
        log.info("%s: %s", variant.name, quality[variant.quantization])
    params = model.num_params() + cfg.vocab_size * cfg.n_embd  # + the untied head
    for variant in VARIANTS:
        folder = TEXT_DIR / variant.name
        card = model_card(
            variant, quality, result, train_cfg, params, len(train_ids), len(heldout_ids)
        )
        (folder / "MODEL_CARD.md").write_text(card)
        (folder / "quality.json").write_text(
            json.dumps({k: v.__dict__ for k, v in quality.items()}, indent=2) + "\n"
        )
        _write_manifest(folder, variant, eos, quality[variant.quantization])
    return quality


def _write_manifest(folder: Path, variant: Variant, eos: int, q: Quality) -> None:
    from models.recipes.text_model import MODEL_CONFIG as cfg

    files = ["model.onnx", "tokenizer.json", "config.json", "generation_config.json",
             "MODEL_CARD.md", "quality.json"]
    kv_bytes = 2 * cfg.n_layer * cfg.n_positions * cfg.n_embd * 4
    manifest = ModelManifest(
        name=variant.name,
        version=VERSION,
        task="text-generation",
        engine="onnxruntime",
        model="model.onnx",
        tokenizer="tokenizer.json",
        files=file_entries(folder, files),
        quantization=variant.quantization,  # type: ignore[arg-type]
        boards=["*"],
        min_ram_mb=int((q.model_bytes * 2 + kv_bytes) / 2**20) + 64,
        generation=GenerationDefaults(
            max_tokens=128, temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1
        ),
        self_test=SelfTest(prompt=PROMPT, max_tokens=8),
        text=TextSpec(
            num_layers=cfg.n_layer,
            num_heads=cfg.n_head,
            head_dim=cfg.head_dim,
            vocab_size=cfg.vocab_size,
            context_length=cfg.n_positions,
            eos_token_id=eos,
            bos_token_id=eos,
        ),
        license=LICENSE,
        description=(
            f"A {cfg.n_layer}-layer GPT-2-architecture decoder trained from scratch on Jane "
            f"Austen's novels ({variant.quantization}); writes English prose in her style."
        ),
    )
    write_manifest(folder, manifest)


def model_card(
    variant: Variant,
    quality: dict[str, Quality],
    result: TrainResult,
    train_cfg: dict[str, object],
    params: int,
    train_tokens: int,
    heldout_tokens: int,
) -> str:
    from models.recipes.text_model import MODEL_CONFIG as cfg

    q = quality[variant.quantization]
    rows = "\n".join(
        f"| {name} | {v.model_bytes / 2**20:.2f} MiB | {v.perplexity:.2f} |"
        for name, v in quality.items()
    )
    seeds = [seed for _ in range(2) for seed in SAMPLE_SEEDS]
    samples = "\n".join(f"- seed {s}: “{text}”" for s, text in zip(seeds, q.samples, strict=True))
    return f"""# {variant.name}

A small decoder-only transformer (GPT-2 architecture) trained from scratch by fleetgen
on Jane Austen's six novels. It continues a prompt with English prose in Austen's
style: grammatical-ish sentences, plausible names and manners, no real story logic. It
is the model fleetgen ships so that text generation works on any board with no download.

This folder: **{variant.quantization}**, `model.onnx` {q.model_bytes / 2**20:.2f} MiB,
ONNX Runtime, Hugging Face / Optimum decoder layout with KV cache (one graph for prefill
and decode), `tokenizer.json` (Hugging Face `tokenizers`), `config.json` and
`generation_config.json` as an Optimum export has them.

## Data and license

- Corpus: {CORPUS_NAME}: Sense and Sensibility, Pride and Prejudice, Mansfield Park,
  Emma, Northanger Abbey, Persuasion (Project Gutenberg text). The recipe fetches it
  with `apt-get download {DEB_PACKAGE}` and reads the R data files directly.
- License: {CORPUS_LICENSE}. The weights are fleetgen's, under MIT.
- Split: paragraphs; the last 3% of each novel is held out ({heldout_tokens} tokens);
  chapter headings and front matter dropped; each paragraph ends with `<|endoftext|>`.

## Model

- Architecture: GPT-2 (learned positions, pre-LayerNorm, GELU tanh, multi-head
  attention), {cfg.n_layer} layers, {cfg.n_head} heads of {cfg.head_dim}, width {cfg.n_embd},
  context {cfg.n_positions}, vocabulary {cfg.vocab_size} (byte-level BPE, EOS
  `<|endoftext|>` = id 0). LM head stored untied (a copy of the embedding, transposed)
  so both quantizers quantize it. {params / 1e6:.2f} M parameters as exported.
- Training: {result.steps} steps of {train_cfg["batch_size"]} x {cfg.n_positions} tokens
  ({result.tokens_seen / 1e6:.1f} M tokens, about {result.tokens_seen / train_tokens:.1f}
  passes over the training split), AdamW, cosine schedule, seed {train_cfg["seed"]},
  PyTorch on 2 CPU threads{' with bf16 autocast' if result.bf16 else ''},
  {result.elapsed_s / 60:.1f} min wall (stopped by
  {result.stopped_by}). Final training loss {result.train_loss:.3f}, held-out loss
  {result.heldout_loss:.3f} nats/token (PyTorch).

## Quality (held-out perplexity, ONNX Runtime, windows of {cfg.n_positions} tokens)

| variant | model.onnx | perplexity |
|---|---|---|
{rows}

- int8: `onnxruntime.quantization.quantize_dynamic` (weights int8 per tensor, activations
  quantized at run time; the embedding too).
- int4: `MatMulNBitsQuantizer` (4-bit symmetric blocks of 32, accuracy level 4); the
  embedding `Gather` stays fp32, which is why this file is larger than the int8 one.
- Greedy decoding with the KV cache gives the same tokens as recomputing the whole
  sequence each step: {"yes" if q.cache_matches_recompute else "no"} (first 24 tokens of the prompt below).
  Dynamic int8 quantizes activations per tensor, so a prefill of many tokens and a
  one-token step can round differently: for int8 the two paths may drift apart.

## Samples ({variant.quantization})

Greedy (small models loop without a repetition penalty): “{PROMPT}{q.greedy}”

Sampled (temperature 0.8, top-k 40, repetition penalty 1.1), prompt in the quote:
{samples}

## Rebuild

`make models` (installs the `recipes` extra: torch 2.13.0 CPU, onnx, scikit-learn,
tflite), or `python -m models.build`. Training reuses `models/build/text/{NAME}/checkpoint.pt`
when its configs match; `python -m models.recipes.text_model train --force` retrains
(about 25 minutes on 2 cores). The schedule is step-based and seeded, so a machine of the same
kind that reaches all steps inside the time budget reproduces the same weights.
"""
