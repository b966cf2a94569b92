"""Training loop for the text model: CPU, 2 threads, seeded, with a wall-clock budget.

The learning-rate schedule runs on progress = max(step / max_steps, elapsed / budget),
so a slow machine still finishes inside its budget with a fully decayed learning rate;
a machine fast enough to reach `max_steps` first gives the same weights run to run
(on the same kind of CPU: other kernels round differently).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from models.recipes.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234
    batch_size: int = 16
    max_steps: int = 1200
    time_budget_s: float = 26 * 60
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    threads: int = 2
    # bf16 autocast roughly doubles the steps per minute on CPUs with native bf16
    # (AVX512-BF16, AMX); elsewhere it would be emulated and slower, so it is off there.
    bf16: bool = True


@dataclass(frozen=True)
class TrainResult:
    steps: int
    tokens_seen: int
    elapsed_s: float
    train_loss: float
    heldout_loss: float
    stopped_by: str
    bf16: bool = False


def _lr(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def _batch(data: np.ndarray, rng: np.random.Generator, batch: int, seq: int) -> torch.Tensor:
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([data[s : s + seq + 1] for s in starts]).astype(np.int64))


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _loss(model: GPT, xy: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, _ = model(xy[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xy[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_loss(model: GPT, data: np.ndarray, seq: int) -> float:
    """Mean next-token loss over non-overlapping windows of the held-out stream."""
    model.eval()
    n = (len(data) - 1) // seq
    total = 0.0
    for i in range(0, n, 16):
        rows = [data[j * seq : j * seq + seq + 1] for j in range(i, min(n, i + 16))]
        total += _loss(model, torch.from_numpy(np.stack(rows).astype(np.int64))).item() * len(rows)
    model.train()
    return total / max(1, n)


def train(
    model_cfg: GPTConfig, cfg: TrainConfig, data: np.ndarray, heldout: np.ndarray
) -> tuple[GPT, TrainResult]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = GPT(model_cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    seq = model_cfg.n_positions
    bf16 = cfg.bf16 and native_bf16()
    log.info("training %d params, config %s, %s, bf16 autocast %s", model.num_params(), model_cfg,
             asdict(cfg), bf16)
    start = time.monotonic()
    step, stopped_by, smooth = 0, "max_steps", float("nan")
    while step < cfg.max_steps:
        elapsed = time.monotonic() - start
        if elapsed >= cfg.time_budget_s:
            stopped_by = "time_budget"
            break
        progress = max(step / cfg.max_steps, elapsed / cfg.time_budget_s)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step, progress)
        loss = _loss(model, _batch(data, rng, cfg.batch_size, seq), bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        smooth = loss.item() if math.isnan(smooth) else 0.95 * smooth + 0.05 * loss.item()
        step += 1
        if step % 10 == 0:
            log.info("step %d loss %.3f lr %.2e %.0fs", step, smooth, opt.param_groups[0]["lr"], elapsed)
        if step % cfg.eval_every == 0:
            log.info("step %d heldout loss %.3f", step, heldout_loss(model, heldout[:20_000], seq))
    elapsed = time.monotonic() - start
    result = TrainResult(
        steps=step,
        tokens_seen=step * cfg.batch_size * seq,
        elapsed_s=round(elapsed, 1),
        train_loss=round(smooth, 4),
        heldout_loss=round(heldout_loss(model, heldout, seq), 4),
        stopped_by=stopped_by,
        bf16=bf16,
    )
    log.info("done: %s", result)
    return model, result


def save_checkpoint(path: Path, model: GPT, result: TrainResult, cfg: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_config": model.cfg.to_dict(),
            "train_config": asdict(cfg),
            "result": asdict(result),
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[GPT, TrainResult, dict[str, object]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, TrainResult(**ckpt["result"]), ckpt["train_config"]
