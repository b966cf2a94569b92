"""Telemetry retention: raw samples for a window, then downsampled buckets, then nothing.

`prune` folds raw samples older than `raw_days` into per-device buckets of `bucket_s`
(the mean of each numeric field, and the count), deletes those raw rows, and deletes
buckets older than `keep_days`. Run by the supervisor once an hour and by `fleetgen db prune`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from controller.store.core import TelemetryRow
from controller.store.tables import TelemetryRollupRow

DAY = 86400.0
_FIELDS = ("cpu_pct", "mem_used_mb", "temp_c", "power_w", "tokens_per_s", "latency_ms", "requests", "errors")


@dataclass(frozen=True, slots=True)
class PruneResult:
    downsampled: int
    buckets: int
    expired_buckets: int


class TelemetryRetention:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def prune(self, now: float, *, raw_days: float = 7, keep_days: float = 90, bucket_s: float = 300,
              chunk: int = 20_000) -> PruneResult:
        if not 0 < raw_days <= keep_days or bucket_s <= 0:
            raise ValueError(f"need 0 < raw_days ({raw_days}) <= keep_days ({keep_days}) and bucket_s > 0")
        raw_cut = now - raw_days * DAY
        # Only whole buckets: a bucket straddling the cut waits for the next run.
        raw_cut -= raw_cut % bucket_s
        downsampled = buckets = 0
        while True:
            with Session(self.engine) as s, s.begin():
                rows = s.execute(select(TelemetryRow.device_id, TelemetryRow.seq, TelemetryRow.ts,
                                        TelemetryRow.sample)
                                 .where(TelemetryRow.ts < raw_cut).order_by(TelemetryRow.device_id,
                                                                             TelemetryRow.ts).limit(chunk)).all()
                if not rows:
                    break
                acc: dict[tuple[str, float], tuple[int, dict[str, float], dict[str, int]]] = {}
                for device, _seq, ts, sample in rows:
                    key = (device, ts - ts % bucket_s)
                    n, sums, counts = acc.get(key, (0, {}, {}))
                    for f in _FIELDS:
                        v = (sample or {}).get(f)
                        if isinstance(v, int | float):
                            sums[f] = sums.get(f, 0.0) + float(v)
                            counts[f] = counts.get(f, 0) + 1
                    acc[key] = (n + 1, sums, counts)
                for (device, bucket), (n, sums, counts) in acc.items():
                    row = s.get(TelemetryRollupRow, (device, bucket))
                    if row is None:
                        means = {f: sums[f] / counts[f] for f in sums}
                        s.add(TelemetryRollupRow(device_id=device, bucket=bucket, width_s=bucket_s, samples=n,
                                                 means=means))
                        buckets += 1
                    else:  # a bucket folded in an earlier chunk: weigh the means by count
                        old = dict(row.means)
                        total = row.samples + n
                        for f in sums:
                            prev = old.get(f)
                            mean = sums[f] / counts[f]
                            old[f] = mean if prev is None else (prev * row.samples + mean * n) / total
                        row.samples, row.means = total, old
                for device, seq, _ts, _s in rows:
                    s.execute(delete(TelemetryRow).where(TelemetryRow.device_id == device, TelemetryRow.seq == seq))
                downsampled += len(rows)
        with Session(self.engine) as s, s.begin():
            res = s.execute(delete(TelemetryRollupRow).where(TelemetryRollupRow.bucket < now - keep_days * DAY))
            expired = res.rowcount or 0  # type: ignore[attr-defined]
        return PruneResult(downsampled, buckets, expired)
