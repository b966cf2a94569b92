"""The power budget in force on this device, for processes other than the daemon.

The daemon applies the budget of the signed desired document (or agent.toml's `[power]
budget_w`) to its governor and records it here, STATE/power/budget.json, so that a
one-shot `fleetgen-agent generate` holds the same budget without a broker: a budget the
controller signed binds every generation on the device, not only the daemon's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import msgspec

from agent.fsutil import atomic_write, ensure_private_dir

log = logging.getLogger(__name__)

BUDGET_FILE = Path("power") / "budget.json"
Source = Literal["desired", "config", "none"]


class BudgetInForce(msgspec.Struct, kw_only=True, frozen=True):
    budget_w: float | None = None
    source: Source = "none"
    director_version: int = 0


def save_budget(state_dir: Path, budget: BudgetInForce) -> None:
    path = Path(state_dir) / BUDGET_FILE
    ensure_private_dir(path.parent)
    atomic_write(path, msgspec.json.encode(budget))


def load_budget(state_dir: Path) -> BudgetInForce | None:
    """What the daemon last applied; None when it never did (or the file is unreadable,
    which is logged: the config's budget then applies)."""
    path = Path(state_dir) / BUDGET_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=BudgetInForce)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None


def budget_in_force(state_dir: Path, config_budget_w: float | None) -> BudgetInForce:
    """The signed desired document's budget when the daemon applied one, else the config's."""
    saved = load_budget(state_dir)
    if saved is not None and saved.source == "desired":
        return saved
    if config_budget_w is not None:
        return BudgetInForce(budget_w=config_budget_w, source="config")
    return BudgetInForce()
