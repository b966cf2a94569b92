"""What the demo shows on the terminal: numbered steps, the commands it runs, results, and
a spinner while it waits. rich when it is installed (the controller extra brings it),
plain lines otherwise (and whenever the output is not a terminal, e.g. in a test)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Protocol, TextIO


class Progress(Protocol):
    def step(self, number: int, title: str) -> None: ...
    def command(self, text: str) -> None: ...
    def info(self, text: str) -> None: ...
    def ok(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...
    def block(self, text: str) -> None: ...
    def waiting(self, what: str) -> contextlib.AbstractContextManager[None]: ...


class PlainProgress:
    """One line per thing, flushed at once: what a log file or a test reads."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.started = time.monotonic()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, number: int, title: str) -> None:
        self._line(f"\n[{time.monotonic() - self.started:5.1f}s] {number}. {title}")

    def command(self, text: str) -> None:
        self._line(f"  $ {text}")

    def info(self, text: str) -> None:
        self._line(f"  {text}")

    def ok(self, text: str) -> None:
        self._line(f"  ok: {text}")

    def warn(self, text: str) -> None:
        self._line(f"  !! {text}")

    def block(self, text: str) -> None:
        for line in text.splitlines():
            self._line(f"    {line}")

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        self._line(f"  ... {what}")
        yield


class RichProgress:
    """The same, with colour and a live spinner."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(highlight=False)
        self.started = time.monotonic()

    def step(self, number: int, title: str) -> None:
        from rich.markup import escape

        elapsed = time.monotonic() - self.started
        self.console.print(f"\n[dim]{elapsed:5.1f}s[/dim] [bold cyan]{number}. {escape(title)}[/bold cyan]")

    def command(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"  [dim]$[/dim] [green]{escape(text)}[/green]")

    def info(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"  {escape(text)}")

    def ok(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"  [bold green]✓[/bold green] {escape(text)}")

    def warn(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"  [bold yellow]↺[/bold yellow] {escape(text)}")

    def block(self, text: str) -> None:
        from rich.markup import escape

        for line in text.splitlines():
            self.console.print(f"    [dim]{escape(line)}[/dim]")

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        from rich.markup import escape

        with self.console.status(f"  {escape(what)}", spinner="dots"):
            yield


def make_progress(plain: bool = False) -> Progress:
    """rich on a terminal when installed, else plain lines."""
    if not plain and sys.stdout.isatty():
        try:
            return RichProgress()
        except ImportError:
            pass
    return PlainProgress()
