"""Execution-provider choice: preference ∩ available, CPU last, fallback logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.runtime import EngineOptions, TextGenerator, load_model
from agent.runtime.errors import RequestError
from agent.runtime.providers import CPU, choose_providers

AVAILABLE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]


def test_preference_order_kept_and_cpu_last() -> None:
    assert choose_providers(["cuda", "tensorrt"], AVAILABLE) == [
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        CPU,
    ]
    assert choose_providers(["cpu", "cuda"], AVAILABLE) == ["CUDAExecutionProvider", CPU]
    assert choose_providers([], AVAILABLE) == [CPU]


def test_missing_preferred_falls_back_to_cpu_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.runtime.providers")
    assert choose_providers(["VitisAIExecutionProvider"], [CPU]) == [CPU]
    text = caplog.text
    assert "VitisAIExecutionProvider not available" in text
    assert "falling back to CPUExecutionProvider" in text
    assert "execution providers: CPUExecutionProvider" in text


def test_engine_falls_back_to_cpu(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gen = load_model(tiny_dir, EngineOptions(threads=1, providers=("cuda", "tensorrt")))
    assert isinstance(gen, TextGenerator)
    assert gen.engine.providers == [CPU]
    assert "CUDAExecutionProvider not available" in caplog.text
    assert gen.generate(gen.request("x", max_tokens=2)).timings.generated_tokens >= 1


def test_thread_count_is_validated() -> None:
    with pytest.raises(RequestError, match=r"threads must be in 1\.\.256, got 0"):
        EngineOptions(threads=0)


# ai_edge_litert's Delegate.__del__ trips over its own failed __init__ (no `_library`)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tflite_delegate_missing_falls_back_to_cpu(
    image_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from agent.runtime import ImageGenerator, ImageRequest

    caplog.set_level(logging.INFO)
    gen = load_model(image_dirs["tflite"], EngineOptions(threads=1, tflite_delegates=("/nonexistent/libdelegate.so",)))
    assert isinstance(gen, ImageGenerator)
    assert "TFLite delegate /nonexistent/libdelegate.so not loadable" in caplog.text
    assert "falling back to CPU kernels" in caplog.text
    assert gen.generate(ImageRequest(class_id=1, seed=0)).png
