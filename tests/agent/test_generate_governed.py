"""`fleetgen-agent generate` runs through the governed runtime: the GenerationQueue the local
API uses, under the power governor when a budget is in force (the signed desired document's,
recorded by the daemon in STATE/power/budget.json, else agent.toml's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.budget import BudgetInForce, budget_in_force, load_budget, save_budget

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "text" / "austen-3m"
# A fixture board whose rail reads a steady 7.38 W (firmware/testdata): the governor's
# decisions on it do not depend on what else runs on this machine.
BOARD = ROOT / "firmware" / "testdata" / "jetson-orin-nano"


def config(tmp_path: Path, power: str = "") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[board]\nroot = "{BOARD}"\n'
                    f"[power]\ntick_s = 0.05\nwindow_s = 1\n{power}")
    return path


def generate(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "agent", "generate", "--config", str(cfg), "--log-level", "INFO",
            "--model", str(MODEL), "--greedy", "--ignore-eos", "--max-tokens", "8", "--json", *extra, "Once"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def test_budget_precedence_desired_over_config(tmp_path: Path) -> None:
    assert budget_in_force(tmp_path, None) == BudgetInForce()
    assert budget_in_force(tmp_path, 9.0) == BudgetInForce(budget_w=9.0, source="config")
    save_budget(tmp_path, BudgetInForce(budget_w=6.0, source="desired", director_version=4))
    assert budget_in_force(tmp_path, 9.0).budget_w == 6.0
    # The daemon recorded that the desired document dropped its budget: the config's holds.
    save_budget(tmp_path, BudgetInForce(budget_w=9.0, source="config", director_version=5))
    assert budget_in_force(tmp_path, 9.0) == BudgetInForce(budget_w=9.0, source="config")


def test_an_unreadable_budget_file_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "power" / "budget.json"
    path.parent.mkdir()
    path.write_text("{not json")
    assert load_budget(tmp_path) is None
    assert budget_in_force(tmp_path, 7.0).source == "config"
    assert "ignoring" in caplog.text and "budget.json" in caplog.text


def test_the_signed_budget_the_daemon_recorded_governs_local_generation(tmp_path: Path) -> None:
    save_budget(tmp_path / "state", BudgetInForce(budget_w=20.0, source="desired", director_version=3))
    out = generate(config(tmp_path, "budget_w = 1.0\n"))  # under the floor, but the desired one wins
    assert out.returncode == 0, out.stderr
    assert "governed by a 20.00 W budget (desired)" in out.stderr
    # The session does not spin its workers while a budget binds (agent.runtime.spin).
    assert "a power budget binds" in out.stderr
    doc = json.loads(out.stdout)
    assert doc["generated_tokens"] == 8
    assert doc["power"]["budget_w"] == 20.0 and doc["power"]["draw_w"] == pytest.approx(7.38, abs=0.01)
    assert doc["power"]["estimated"] is False and 1 <= doc["power"]["threads"] <= 8


def test_without_a_budget_nothing_is_governed(tmp_path: Path) -> None:
    out = generate(config(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "governed by" not in out.stderr and "firmware.control" not in out.stderr
    assert json.loads(out.stdout)["generated_tokens"] == 8


def test_a_budget_under_the_boards_floor_is_refused_in_one_line(tmp_path: Path) -> None:
    out = generate(config(tmp_path, "budget_w = 1.0\n"))
    assert out.returncode == 1
    assert "the power budget in force (1 W, from the config) is below this board's floor" in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
