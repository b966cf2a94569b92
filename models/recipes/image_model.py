"""Recipe: the shipped image generator (`digits-cvae`), a class-conditional VAE trained on
scikit-learn's 8x8 handwritten digits; its decoder is what ships, as ONNX, TFLite fp32
and TFLite int8.

Decoder contract (every variant): inputs `label` float32 [batch, 10] (one-hot class)
and `z` float32 [batch, 8] (latent, standard normal; zeros give the class's typical
digit); output `image` float32 [batch, 8, 8, 1], pixel intensity in [0, 1] (1 = ink).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

NAME = "digits-cvae"
NUM_CLASSES = 10
LATENT = 8
HIDDEN = 128
SIDE = 8
SEED = 1234


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(NUM_CLASSES + LATENT, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, SIDE * SIDE)

    def logits(self, label: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(torch.cat([label, z], dim=1)))
        return self.fc3(F.relu(self.fc2(h)))

    def forward(self, label: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(label, z)).reshape(-1, SIDE, SIDE, 1)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(SIDE * SIDE + NUM_CLASSES, HIDDEN)
        self.out = nn.Linear(HIDDEN, 2 * LATENT)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.out(F.relu(self.fc(torch.cat([x, label], dim=1)))).chunk(2, dim=1)
        return mu, logvar


@dataclass(frozen=True)
class Digits:
    images: np.ndarray  # [n, 64] float32 in [0, 1]
    labels: np.ndarray  # [n] int64


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    return Digits(
        images=(data.data / 16.0).astype(np.float32), labels=data.target.astype(np.int64)
    )


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def train_cvae(digits: Digits, steps: int = 4000, batch: int = 128) -> Decoder:
    """Seeded CVAE training (Bernoulli likelihood, KL to N(0, I)); about a minute on 2 cores."""
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    enc, dec = Encoder(), Decoder()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=2e-3)
    x_all = torch.from_numpy(digits.images)
    y_all = torch.from_numpy(one_hot(digits.labels))
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(x_all), size=batch))
        x, y = x_all[idx], y_all[idx]
        mu, logvar = enc(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy_with_logits(dec.logits(y, z), x, reduction="sum") / batch
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
        loss = recon + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            log.info("cvae step %d recon %.2f kl %.2f", step + 1, recon.item(), kl.item())
    return dec.eval()


def export_onnx(dec: Decoder, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.from_numpy(one_hot(np.array([1, 7]))), torch.zeros(2, LATENT))
    with torch.no_grad():
        torch.onnx.export(
            dec,
            example,
            str(path),
            input_names=["label", "z"],
            output_names=["image"],
            dynamic_axes={"label": {0: "batch"}, "z": {0: "batch"}, "image": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def decoder_weights(dec: Decoder) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [out, in], bias [out]) per layer, as TFLite's FULLY_CONNECTED wants them."""
    return [
        (fc.weight.detach().numpy().copy(), fc.bias.detach().numpy().copy())
        for fc in (dec.fc1, dec.fc2, dec.fc3)
    ]
