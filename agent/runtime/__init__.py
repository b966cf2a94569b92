"""On-device generation: engines (ONNX Runtime, TFLite), text and image generators.

    from agent.runtime import load_model, EngineOptions
    gen = load_model(Path("models/text/…"), EngineOptions(threads=2))
    result = gen.generate(gen.request("Once upon a time", max_tokens=32), on_text=print)

Heavy libraries (onnxruntime, tflite, tokenizers) are imported by `load_model`, not here;
numpy with the first name that needs it (the names below are resolved lazily), so that
`agent.runtime.options` and `agent.runtime.errors` stay light for a daemon with no model.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.runtime.errors import EngineError, ModelLoadError
from agent.runtime.options import EngineOptions

if TYPE_CHECKING:
    from agent.runtime.image import ImageGenerator, ImageRequest
    from agent.runtime.loader import ModelInfo
    from agent.runtime.text import TextGenerator, TextRequest

__all__ = [
    "EngineOptions",
    "ImageGenerator",
    "ImageRequest",
    "ModelInfo",
    "TextGenerator",
    "TextRequest",
    "load_model",
    "resolve_spin",
]

_LAZY = {
    "ImageGenerator": "agent.runtime.image",
    "ImageRequest": "agent.runtime.image",
    "ModelInfo": "agent.runtime.loader",
    "TextGenerator": "agent.runtime.text",
    "TextRequest": "agent.runtime.text",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def resolve_spin(options: EngineOptions) -> EngineOptions:
    """Options with `spin` decided (agent.runtime.spin) when it was left open."""
    if options.spin is not None:
        return options
    import dataclasses

    from agent.runtime import spin

    decision = spin.choose(options.threads, options.budget_binding, cores_dedicated=options.cores_dedicated)
    return dataclasses.replace(options, spin=decision.spin, spin_auto=True)


def load_model(model_dir: Path, options: EngineOptions | None = None) -> TextGenerator | ImageGenerator:
    """Load a model folder (fleetgen manifest or Optimum export) and warm it up.

    Warming up (one short run) makes the first request's latency honest and proves the
    model runs before anyone depends on it (Frigate does the same).
    """
    from agent.runtime.image import ImageGenerator, ImageRequest
    from agent.runtime.loader import open_folder
    from agent.runtime.text import TextGenerator

    t0 = time.perf_counter()
    options = resolve_spin(options or EngineOptions())
    info, engine = open_folder(Path(model_dir), options)
    generator: TextGenerator | ImageGenerator
    try:
        if info.task == "text-generation":
            generator = TextGenerator(info, engine)
            generator.options = options
            spec = generator.spec
            start = next((t for t in (spec.bos_token_id, spec.eos_token_id) if t is not None), 0)
            generator.decoder.reset(2)
            generator.decoder.forward([start])
        else:
            generator = ImageGenerator(info, engine)
            generator.engine.run(generator.feeds(ImageRequest(), 0))
    except ModelLoadError:
        engine.close()
        raise
    except EngineError as e:
        engine.close()
        raise ModelLoadError(f"{model_dir}: warm-up run failed: {e}") from None
    generator.load_ms = (time.perf_counter() - t0) * 1000
    return generator
