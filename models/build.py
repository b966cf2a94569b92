"""Build every model fleetgen ships, from its recipe: `python -m models.build` (what
`make models` runs after installing the `recipes` extra).

Text: Jane Austen corpus → tokenizer → training (≤ 30 min on 2 cores, cached under
models/build/) → ONNX fp32 / int8 / int4 folders in models/text/. Image: digits CVAE →
ONNX, TFLite fp32, TFLite int8 folders in models/image/. Every folder gets its
manifest.json and MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent
BUDGET_BYTES = 25 * 2**20  # everything committed under models/text and models/image


def shipped_bytes() -> int:
    return sum(
        p.stat().st_size
        for sub in ("text", "image")
        for p in (MODELS_DIR / sub).rglob("*")
        if p.is_file()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the models fleetgen ships.")
    parser.add_argument("--only", choices=["text", "image"], help="build one family only")
    parser.add_argument(
        "--retrain", action="store_true", help="retrain the text model even if cached"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.only in (None, "image"):
        from models.recipes import image_package

        image_package.build_all()
    if args.only in (None, "text"):
        from models.recipes import text_model, text_package

        text_model.train_stage(force=args.retrain)
        text_package.build_all()
    total = shipped_bytes()
    log.info("shipped models: %.1f MiB of %.0f MiB", total / 2**20, BUDGET_BYTES / 2**20)
    if total > BUDGET_BYTES:
        log.error("shipped models exceed the budget: %d > %d bytes", total, BUDGET_BYTES)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
