"""sd_notify for the agent's unit (Type=notify): READY, WATCHDOG, STATUS, STOPPING.

systemd passes `NOTIFY_SOCKET` (a datagram socket; `@` is the abstract namespace) and,
with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). Outside systemd nothing is
set and every call is a no-op. The protocol is a few lines of text per datagram, so no
library: this module is the whole of it.

The watchdog rule (PITFALLS): `tick(healthy)` is called from the main loop; it pings at
half the interval, and only when the caller says the process is healthy. A loop that
hangs stops calling `tick`, an unhealthy one (the API's event loop stalled) is told so,
and either way systemd stops getting pings and restarts the unit. The first withheld ping
sends a STATUS line saying why, so `systemctl status` shows it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self.clock = clock
        self.address: str | None = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None
        self._next_ping = 0.0
        self._withheld = False
        self._last_status: str | None = None
        self.sent: deque[str] = deque(maxlen=64)  # the last messages sent (status, tests)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def ping_interval_s(self) -> float | None:
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(lines)
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), target)
        except OSError as e:  # systemd gone or socket wrong: log once per kind, never fail the agent
            log.warning("sd_notify to %s failed: %s", self.address, e)
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str | None = None) -> None:
        lines = ["READY=1"]
        if status:
            lines.append(f"STATUS={status}")
            self._last_status = status
        self.send(*lines)
        self._next_ping = self.clock()  # the first ping right away

    def status(self, text: str) -> None:
        text = text.replace("\n", " ")[:200]
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def tick(self, healthy: bool = True, why: str = "main loop unhealthy") -> None:
        """From the main loop, as often as it likes: pings at half the watchdog interval while healthy."""
        if self.watchdog_s is None or self.address is None:
            return
        now = self.clock()
        if now < self._next_ping:
            return
        if healthy:
            self.send("WATCHDOG=1")
            self._withheld = False
            self._next_ping = now + self.watchdog_s / 2
        elif not self._withheld:
            self._withheld = True
            log.error("withholding the watchdog ping: %s", why)
            self.status(f"unhealthy: {why}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
