"""The manifest's self-test: a short generation after install, the update's health gate.

    report = run_self_test(load_model(slot_dir))
    if not report.ok: roll back (report.detail says why)

Text: generate `self_test.max_tokens` greedy tokens from `self_test.prompt`; pass when at
least one token comes out and, if `expect` is set, the text contains it. Image: generate
class `self_test.image_class` (or the first class), pass when the PNG has the declared size.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from agent.errors import FleetgenError
from agent.runtime.image import ImageGenerator, ImageRequest
from agent.runtime.text import TextGenerator


@dataclass(frozen=True)
class SelfTestReport:
    ok: bool
    detail: str
    duration_ms: float
    output: str = ""


def run_self_test(generator: TextGenerator | ImageGenerator) -> SelfTestReport:
    t0 = time.perf_counter()
    try:
        ok, detail, output = _text(generator) if isinstance(generator, TextGenerator) else _image(generator)
    except FleetgenError as e:
        ok, detail, output = False, f"self-test failed: {e}", ""
    return SelfTestReport(ok, detail, (time.perf_counter() - t0) * 1000, output)


def _text(gen: TextGenerator) -> tuple[bool, str, str]:
    test = gen.info.self_test
    result = gen.generate(
        gen.request(test.prompt, max_tokens=test.max_tokens, greedy=True, repetition_penalty=1.0, seed=0)
    )
    if result.timings.generated_tokens == 0 and result.finish_reason != "eos":
        return False, "self-test generated no token", result.text
    if test.expect is not None and test.expect not in result.text:
        return False, f"self-test output does not contain {test.expect!r}", result.text
    return True, f"{result.timings.generated_tokens} tokens ({result.finish_reason})", result.text


def _image(gen: ImageGenerator) -> tuple[bool, str, str]:
    test, spec = gen.info.self_test, gen.spec
    cls = test.image_class if test.image_class is not None else (0 if spec.num_classes else None)
    result = gen.generate(ImageRequest(class_id=cls, seed=0))
    width, height = struct.unpack(">II", result.png[16:24])
    if (width, height) != (spec.width, spec.height):
        return False, f"self-test image is {width}x{height}, declared {spec.width}x{spec.height}", ""
    return True, f"{width}x{height} PNG, class {cls}", ""
