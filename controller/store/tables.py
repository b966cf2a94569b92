"""Tables of the fleet operations: groups, tags, desired state (director versions),
rollouts, power budgets and allocations, downsampled telemetry.

Rows never leave the store package: repositories return frozen views (controller/store/views.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controller.store.core import Base


class DeviceTagRow(Base):
    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class GroupRow(Base):
    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[float] = mapped_column(Float)
    # The group's (site's) power budget in watts; None: no budget, devices keep their own.
    budget_w: Mapped[float | None] = mapped_column(Float, nullable=True)


class GroupRuleRow(Base):
    """One selector of a group: an explicit device, a board, a tag, or a reported label."""

    __tablename__ = "group_rules"

    group: Mapped[str] = mapped_column(String(64), ForeignKey("groups.name", ondelete="CASCADE"),
                                       primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # device | board | tag | label
    value: Mapped[str] = mapped_column(String(256), primary_key=True)


class DesiredRow(Base):
    """What the director last signed for a device; `version` is its one monotonic counter."""

    __tablename__ = "desired"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    target: Mapped[str | None] = mapped_column(String(512), nullable=True)
    power_budget_w: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated: Mapped[float] = mapped_column(Float)


class RolloutRow(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bundle: Mapped[str] = mapped_column(String(512))
    group: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    waves_spec: Mapped[str] = mapped_column(String(256))
    max_failure_ratio: Mapped[float] = mapped_column(Float)
    wave_timeout_s: Mapped[float] = mapped_column(Float)
    plan: Mapped[list[list[str]]] = mapped_column(JSON)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started: Mapped[float | None] = mapped_column(Float, nullable=True)
    paused_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")


class RolloutDeviceRow(Base):
    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(Integer, ForeignKey("rollouts.id", ondelete="CASCADE"),
                                            primary_key=True)
    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    result: Mapped[str] = mapped_column(String(16))
    previous_target: Mapped[str | None] = mapped_column(String(512), nullable=True)
    director_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    directed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class DevicePowerRow(Base):
    """Per-device power settings for the group allocator."""

    __tablename__ = "device_power"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    priority: Mapped[float] = mapped_column(Float, default=1.0)
    floor_w: Mapped[float] = mapped_column(Float, default=0.0)
    cap_w: Mapped[float | None] = mapped_column(Float, nullable=True)


class AllocationRow(Base):
    """The budget in force for a device, as the allocator last pushed it."""

    __tablename__ = "allocations"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    group: Mapped[str] = mapped_column(String(64), index=True)
    budget_w: Mapped[float] = mapped_column(Float)
    pushed_at: Mapped[float] = mapped_column(Float)


class TelemetryRollupRow(Base):
    """Downsampled telemetry: one row per device and bucket, for samples past the raw window."""

    __tablename__ = "telemetry_rollup"

    device_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    bucket: Mapped[float] = mapped_column(Float, primary_key=True)  # bucket start (epoch s)
    width_s: Mapped[float] = mapped_column(Float)
    samples: Mapped[int] = mapped_column(Integer)
    means: Mapped[dict[str, Any]] = mapped_column(JSON)
