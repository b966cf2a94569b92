"""ORT worker spinning follows the situation (agent.runtime.spin): decided, applied, explicit wins."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.runtime import EngineOptions, resolve_spin
from agent.runtime.engines.onnx import session_options
from agent.runtime.spin import Situation, SteadyFlag, budget_binds, decide


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


# -- the situation's sources: board profile, power governor (issue 10 item 7) -------------


@pytest.mark.parametrize(("situation", "spin", "why"), [
    (Situation(cpu_count=2, threads=2, others_busy_cores=1.9, cores_dedicated=True), True, "board profile"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.0, cores_dedicated=True, budget_binding=True), False,
     "budget"),
    (Situation(cpu_count=2, threads=2, others_busy_cores=0.0, cores_dedicated=True, requested=False), False,
     "explicitly"),
])
def test_decide_with_the_board_profile(situation: Situation, spin: bool, why: str) -> None:
    decision = decide(situation)
    assert decision.spin is spin and why in decision.reason


@dataclass(frozen=True)
class _Decision:
    budget_w: float | None
    throttled: bool


@pytest.mark.parametrize(("decision", "binds"), [
    (None, False),  # the governor has not ticked yet
    (_Decision(budget_w=None, throttled=True), False),  # no budget: nothing to bind
    (_Decision(budget_w=5.0, throttled=False), False),  # a budget, met at full speed
    (_Decision(budget_w=5.0, throttled=True), True),
])
def test_budget_binds(decision: _Decision | None, binds: bool) -> None:
    assert budget_binds(decision) is binds


def test_steady_flag_changes_only_after_the_new_value_held() -> None:
    now = [0.0]
    raw = [True]
    flag = SteadyFlag(lambda: raw[0], hold_s=10.0, clock=lambda: now[0])
    assert flag() is True  # the first reading as it is
    raw[0] = False
    now[0] = 5.0
    assert flag() is True
    raw[0] = True  # back before the hold ran out: the clock starts again
    now[0] = 8.0
    assert flag() is True
    raw[0] = False
    now[0] = 9.0
    assert flag() is True
    now[0] = 19.0
    assert flag() is False


@dataclass
class _Knobs:
    budget_binding: bool
    threads: int = 1
    admit: bool = True

    def pace_delay(self, step_s: float) -> float:
        return 0.0


def test_the_queue_follows_the_binding_state(tiny_dir: Path) -> None:
    from agent.runtime import TextGenerator, load_model
    from agent.runtime.service import GenerationQueue

    # the board gives the cores to the model: spin while no budget binds
    gen = load_model(tiny_dir, EngineOptions(threads=1, cores_dedicated=True))
    assert isinstance(gen, TextGenerator) and gen.options.spin is True and gen.options.spin_auto
    knobs = _Knobs(budget_binding=True)
    q = GenerationQueue(gen, knobs=knobs)
    try:
        engine = gen.engine
        q.submit(gen.request("hello", max_tokens=2)).result(timeout=30)
        assert gen.options.spin is False and gen.options.budget_binding  # a budget binds: reloaded
        assert gen.engine is not engine
        engine = gen.engine
        q.submit(gen.request("hello", max_tokens=2)).result(timeout=30)
        assert gen.engine is engine  # nothing changed: no reload
        knobs.budget_binding = False
        q.submit(gen.request("hello", max_tokens=2)).result(timeout=30)
        assert gen.options.spin is True and gen.engine is not engine
    finally:
        q.close()
        gen.close()


def test_an_explicit_setting_is_kept_when_the_budget_binds(tiny_dir: Path) -> None:
    from agent.runtime import TextGenerator, load_model
    from agent.runtime.service import GenerationQueue

    gen = load_model(tiny_dir, EngineOptions(threads=1, spin=True))
    assert isinstance(gen, TextGenerator) and not gen.options.spin_auto
    q = GenerationQueue(gen, knobs=_Knobs(budget_binding=True))
    try:
        engine = gen.engine
        q.submit(gen.request("hello", max_tokens=2)).result(timeout=30)
        assert gen.options.spin is True and gen.engine is engine
    finally:
        q.close()
        gen.close()


def test_the_daemon_hands_the_governors_binding_state_to_generation(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.mqtt.settings import MqttSettings
    from firmware.control import PowerController
    from firmware.detect import detect_board
    from firmware.settings import PowerSettings
    from tests.firmware.conftest import TESTDATA, FakeClock

    root = tmp_path / "board"
    shutil.copytree(TESTDATA / "raspberry-pi-5", root)  # no sensor: a labelled estimate
    clock = FakeClock()
    power = PowerController(detect_board(root), PowerSettings(budget_w=2.0, tick_s=1.0), clock=clock)
    agent = Agent(AgentConfig(device_id="spin-1", state_dir=str(tmp_path / "s"),
                              mqtt=MqttSettings(url="mqtt://127.0.0.1:1")), power=power)
    try:
        assert agent.knobs is not None and agent.knobs.budget_binding is False  # not ticked yet
        clock.t += 1
        agent._tick_power()  # 2 W is below the board's idle draw: the governor holds work back
        knobs = agent.knobs
        assert knobs is not None and knobs.budget_binding is True
        assert knobs.threads == power.runtime.threads and knobs.admit is power.runtime.admit
        power.set_budget(None)
        clock.t += 1
        agent._tick_power()
        assert agent.knobs is not None and agent.knobs.budget_binding is False
    finally:
        agent.spool.close()


def test_a_board_profile_may_give_the_cores_to_the_model(tmp_path: Path) -> None:
    from firmware.profile import BOARDS_DIR, load_profile, load_profiles

    assert not any(p.cores_dedicated for p in load_profiles())  # shipped boards: decide by probing
    text = (BOARDS_DIR / "raspberry-pi-5.toml").read_text()
    appliance = tmp_path / "pi-appliance.toml"
    appliance.write_text(text.replace('priority = 100\n', 'priority = 100\ncores_dedicated = true\n'))
    assert load_profile(appliance).cores_dedicated is True
