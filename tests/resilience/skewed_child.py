"""The update worker (tests/resilience/update_child.py) on a device whose clock is off:

    python -m tests.resilience.skewed_child SKEW_S STATE METADATA TARGETS [ENVELOPE.json]

Everything in the process that reads the wall clock sees it SKEW_S seconds off: time.time
(the director's expiry check binds it as its default clock at import) and the datetime
python-tuf's metadata set takes its reference time from. libfaketime would do the same for
a whole process; it is not installed here, and this needs nothing from the system.
"""

from __future__ import annotations

import datetime
import sys
import time
import types


def skew_clock(seconds: float) -> None:
    real = time.time
    time.time = lambda: real() + seconds

    class SkewedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> SkewedDatetime:  # type: ignore[override]
            return cls.fromtimestamp(time.time(), tz)

    shim = types.ModuleType("datetime")
    shim.__dict__.update(datetime.__dict__)
    shim.datetime = SkewedDatetime  # type: ignore[attr-defined]
    import tuf.ngclient._internal.trusted_metadata_set as tms

    tms.datetime = shim  # type: ignore[attr-defined]


if __name__ == "__main__":
    skew_clock(float(sys.argv[1]))
    from tests.resilience.update_child import main

    sys.exit(main(sys.argv[2:]))
