"""ONNX Runtime checks on an exported decoder: greedy decode with the KV cache must give
the same tokens as recomputing the whole sequence each step; held-out perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _empty_past(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name.startswith("past_key_values."):
            heads, head_dim = inp.shape[1], inp.shape[3]
            feeds[inp.name] = np.zeros((batch, heads, 0, head_dim), dtype=np.float32)
    return feeds


def run(sess: ort.InferenceSession, ids: list[int], past: dict[str, np.ndarray], past_len: int):
    n = len(ids)
    feeds = {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, past_len + n), dtype=np.int64),
        "position_ids": np.arange(past_len, past_len + n, dtype=np.int64)[None, :],
        **past,
    }
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(names, feeds), strict=True))
    present = {k.replace("present.", "past_key_values."): v for k, v in outs.items() if k != "logits"}
    return outs["logits"], present


def greedy_cached(sess: ort.InferenceSession, prompt: list[int], steps: int) -> list[int]:
    logits, past = run(sess, prompt, _empty_past(sess, 1), 0)
    out = [int(logits[0, -1].argmax())]
    length = len(prompt)
    for _ in range(steps - 1):
        logits, past = run(sess, [out[-1]], past, length)
        length += 1
        out.append(int(logits[0, -1].argmax()))
    return out


def greedy_full(sess: ort.InferenceSession, prompt: list[int], steps: int) -> list[int]:
    seq = list(prompt)
    out: list[int] = []
    for _ in range(steps):
        logits, _ = run(sess, seq, _empty_past(sess, 1), 0)
        out.append(int(logits[0, -1].argmax()))
        seq.append(out[-1])
    return out


def perplexity(sess: ort.InferenceSession, ids: np.ndarray, window: int) -> float:
    """exp(mean next-token loss) over non-overlapping windows of the id stream."""
    nll, count = 0.0, 0
    empty = _empty_past(sess, 1)
    for start in range(0, len(ids) - 1, window):
        chunk = [int(t) for t in ids[start : start + window + 1]]
        if len(chunk) < 2:
            break
        logits, _ = run(sess, chunk[:-1], empty, 0)
        z = logits[0].astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        nll -= float(logp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        count += len(chunk) - 1
    return math.exp(nll / count)


def sample_cached(
    sess: ort.InferenceSession,
    prompt: list[int],
    steps: int,
    eos: int,
    seed: int,
    temperature: float = 0.8,
    top_k: int = 40,
    repetition_penalty: float = 1.1,
) -> list[int]:
    """Seeded top-k sampling with the KV cache; stops at EOS. For model-card samples."""
    rng = np.random.default_rng(seed)
    seen = list(prompt)
    logits, past = run(sess, prompt, _empty_past(sess, 1), 0)
    out: list[int] = []
    for _ in range(steps):
        z = logits[0, -1].astype(np.float64)
        for t in set(seen):
            z[t] = z[t] / repetition_penalty if z[t] > 0 else z[t] * repetition_penalty
        z = z / temperature
        top = np.argsort(z)[-top_k:]
        p = np.exp(z[top] - z[top].max())
        token = int(rng.choice(top, p=p / p.sum()))
        if token == eos:
            break
        out.append(token)
        seen.append(token)
        logits, past = run(sess, [token], past, len(seen) - 1)
    return out
