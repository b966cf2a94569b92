"""The manifest self-test used as the update's health gate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.manifest import SelfTest
from agent.runtime import load_model
from agent.runtime.selftest import run_self_test
from tests.runtime.conftest import ONE_THREAD


def test_text_self_test_passes_and_checks_expect(tiny_int8_dir: Path) -> None:
    gen = load_model(tiny_int8_dir, ONE_THREAD)
    report = run_self_test(gen)
    assert report.ok and report.output
    gen.info = dataclasses.replace(gen.info, self_test=SelfTest(prompt="x", expect="\x00never"))
    report = run_self_test(gen)
    assert not report.ok and "does not contain" in report.detail


def test_image_self_test(image_dirs: dict[str, Path]) -> None:
    for folder in image_dirs.values():
        report = run_self_test(load_model(folder, ONE_THREAD))
        assert report.ok, report.detail
        assert "8x8 PNG, class 1" in report.detail
