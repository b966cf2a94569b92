"""The store's repositories, one per concept, sharing one engine."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from controller.store.desired import DesiredRepository
from controller.store.devices import DeviceRepository
from controller.store.groups import GroupRepository
from controller.store.power import PowerRepository
from controller.store.retention import TelemetryRetention
from controller.store.rollouts import RolloutRepository


class Repositories:
    def __init__(self, engine: Engine) -> None:
        self.devices = DeviceRepository(engine)
        self.groups = GroupRepository(engine, self.devices)
        self.desired = DesiredRepository(engine)
        self.rollouts = RolloutRepository(engine)
        self.power = PowerRepository(engine, self.groups)
        self.retention = TelemetryRetention(engine)
