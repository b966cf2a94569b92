"""Execution-provider choice: the board's preference intersected with what ORT offers.

Pure logic (no onnxruntime import) so it is testable without the library; the ONNX
engine passes `onnxruntime.get_available_providers()` in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"

# Short names a board profile or a flag may use.
_ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "vitis": "VitisAIExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
}


def canonical(name: str) -> str:
    """`cuda` → `CUDAExecutionProvider`; full provider names pass through."""
    return _ALIASES.get(name.strip().lower(), name.strip())


def choose_providers(preferred: Sequence[str], available: Sequence[str]) -> list[str]:
    """Preferred providers that are available, in preference order, CPU always last.

    Each preferred provider that is missing is logged as a fallback; the final list is
    logged once at INFO so an operator can see what a model runs on.
    """
    chosen: list[str] = []
    for name in (canonical(p) for p in preferred):
        if name == CPU or name in chosen:
            continue
        if name in available:
            chosen.append(name)
        else:
            log.warning(
                "execution provider %s not available (have %s); falling back",
                name,
                ", ".join(available) or "none",
            )
    chosen.append(CPU)
    if len(chosen) == 1 and any(canonical(p) != CPU for p in preferred):
        log.warning("falling back to %s", CPU)
    log.info("execution providers: %s", ", ".join(chosen))
    return chosen
