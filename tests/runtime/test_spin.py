"""ORT worker spinning follows the situation (agent.runtime.spin): decided, applied, explicit wins."""

from __future__ import annotations

import pytest

from agent.runtime import EngineOptions, resolve_spin
from agent.runtime.engines.onnx import session_options
from agent.runtime.spin import Situation, decide


@pytest.mark.parametrize(("situation", "spin", "why"), [
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.1), True, "the model's"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.25), True, "the model's"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.6), False, "shared"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=1.9), False, "shared"),
    (Situation(cpu_count=8, threads=2, others_busy_cores=5.0), True, "the model's"),  # 3 cores free for 2 threads
    (Situation(cpu_count=8, threads=4, others_busy_cores=5.0), False, "shared"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.0, budget_binding=True), False, "budget"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=2.0, requested=True), True, "explicitly"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.0, requested=False), False, "explicitly"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.0, budget_binding=True, requested=True), True,
     "explicitly"),
])
def test_decide(situation: Situation, spin: bool, why: str) -> None:
    decision = decide(situation)
    assert decision.spin is spin and why in decision.reason


def test_explicit_settings_skip_the_probe_and_reach_the_session() -> None:
    assert resolve_spin(EngineOptions(spin=True)).spin is True
    assert resolve_spin(EngineOptions(threads=1, budget_binding=True)).spin is False
    assert session_options(EngineOptions(spin=True)).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert session_options(EngineOptions(spin=False)).get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
    assert session_options(EngineOptions()).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_an_open_setting_is_decided_at_load(tiny_dir) -> None:  # type: ignore[no-untyped-def]
    from agent.runtime import TextGenerator, load_model

    gen = load_model(tiny_dir, EngineOptions(threads=1))
    try:
        assert isinstance(gen, TextGenerator) and gen.options.spin in (True, False)
    finally:
        gen.close()
