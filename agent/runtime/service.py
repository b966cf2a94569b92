"""Serve many callers with one loaded model: a queue and one worker thread.

Requests run one at a time, in arrival order. A bad request fails its own job with the
error it raised (a RequestError the caller can show as one line); the worker goes on
with the next one.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from agent.errors import FleetgenError
from agent.runtime.engine import EngineOptions
from agent.runtime.errors import EngineError, RequestError
from agent.runtime.spin import Knobs
from agent.runtime.text import TextGenerator, TextRequest, TextResult

log = logging.getLogger(__name__)

_DONE = object()
_ADMIT_POLL_S = 0.05


@dataclass
class _Outcome:
    result: TextResult | None = None
    error: FleetgenError | None = None


@dataclass
class _Reconfigure:
    options: EngineOptions
    done: threading.Event = field(default_factory=threading.Event)
    error: FleetgenError | None = None


class QueueFullError(RequestError):
    """Every slot of the bounded queue is taken; the caller should retry later (HTTP 429)."""


class Job:
    """A submitted request: iterate it for streamed text, or call `result()`.

    `listener`, when given, is called on the worker thread after each chunk and once when
    the job ends, so an event loop can wake up and `drain()` without a thread per job.
    """

    def __init__(self, request: TextRequest, listener: Callable[[], None] | None = None) -> None:
        self.request = request
        self._chunks: queue.Queue[object] = queue.Queue()
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._outcome = _Outcome()
        self._listener = listener
        self.started = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def drain(self) -> list[str]:
        """The chunks streamed since the last call, without blocking."""
        out: list[str] = []
        while True:
            try:
                item = self._chunks.get_nowait()
            except queue.Empty:
                return out
            if item is not _DONE:
                out.append(str(item))

    def has_output(self) -> bool:
        """Chunks wait to be drained, or the job ended (a loop's check before it sleeps)."""
        return self._done.is_set() or not self._chunks.empty()

    def _emit(self, text: str) -> None:
        self._chunks.put(text)
        if self._listener is not None:
            self._listener()

    def cancel(self) -> None:
        """Stop this request (queued: it is skipped; running: it ends before its next step,
        finish_reason "cancelled"). Safe from any thread, idempotent."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[str]:
        while (item := self._chunks.get()) is not _DONE:
            yield str(item)
        self._raise_if_failed()

    def result(self, timeout: float | None = None) -> TextResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"generation not finished after {timeout} s")
        self._raise_if_failed()
        assert self._outcome.result is not None
        return self._outcome.result

    def _raise_if_failed(self) -> None:
        if self._outcome.error is not None:
            raise self._outcome.error

    def _finish(self, outcome: _Outcome) -> None:
        self._outcome = outcome
        self._done.set()
        self._chunks.put(_DONE)
        if self._listener is not None:
            self._listener()


class GenerationQueue:
    """One worker serving `generator`. With `knobs`, before each request the worker applies
    the governor's thread count (a session reload when it changed), waits while
    `admit` is False (new work queues), and paces decode steps by `pace_delay`."""

    def __init__(self, generator: TextGenerator, max_pending: int = 64, knobs: Knobs | None = None) -> None:
        self.generator = generator
        self.knobs = knobs
        if knobs is not None:
            generator.pacer = knobs
        self._jobs: queue.Queue[Job | _Reconfigure | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name="fleetgen-generate", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, request: TextRequest, listener: Callable[[], None] | None = None) -> Job:
        if self._closed:
            raise RequestError("generation queue is closed")
        job = Job(request, listener)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"generation queue is full ({self._jobs.maxsize} pending)") from None
        return job

    @property
    def depth(self) -> int:
        """Requests waiting (not counting the one running)."""
        return self._jobs.qsize()

    @property
    def capacity(self) -> int:
        return self._jobs.maxsize

    def reconfigure(self, options: EngineOptions) -> None:
        """Change threads/providers after the requests already queued (power governor).
        Blocks until applied; raises what the reload raised (the old session keeps serving)."""
        item = _Reconfigure(options)
        self._jobs.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error

    def close(self, timeout: float = 30.0) -> None:
        self._closed = True
        self._jobs.put(None)
        self._thread.join(timeout)

    def _apply_knobs(self) -> None:
        knobs = self.knobs
        if knobs is None:
            return
        while not knobs.admit and not self._closed:
            time.sleep(_ADMIT_POLL_S)
        options = self.generator.options
        threads = knobs.threads
        wanted = options if threads == options.threads else dataclasses.replace(options, threads=threads)
        # agent.runtime.spin.GovernedKnobs (the daemon's) says whether the power budget binds:
        # spinning left to the situation is decided again when that changes
        binding = getattr(knobs, "budget_binding", None)
        if binding is not None and binding != options.budget_binding:
            wanted = dataclasses.replace(wanted, budget_binding=binding)
            if options.spin_auto:
                from agent.runtime import resolve_spin

                wanted = resolve_spin(dataclasses.replace(wanted, spin=None))
        if (wanted.threads, wanted.spin) != (options.threads, options.spin):
            self.generator.reconfigure(wanted)
        elif wanted != options:
            self.generator.options = wanted  # same session: nothing to reload

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if isinstance(job, _Reconfigure):
                try:
                    self.generator.reconfigure(job.options)
                except FleetgenError as e:
                    job.error = e
                job.done.set()
                continue
            if job.cancelled:
                job._finish(_Outcome(error=RequestError("request cancelled before it started")))
                continue
            try:
                self._apply_knobs()
                job.started = True
                result = self.generator.generate(job.request, on_text=job._emit, cancelled=job._cancel.is_set)
                job._finish(_Outcome(result=result))
            except FleetgenError as e:
                # A bad request is its caller's to report (an HTTP 400, the CLI's error line).
                log.log(logging.INFO if isinstance(e, RequestError) else logging.WARNING, "request failed: %s", e)
                job._finish(_Outcome(error=e))
            except Exception as e:  # keep serving: report the bug to the caller, log it whole
                log.exception("request failed unexpectedly")
                job._finish(_Outcome(error=EngineError(f"generation failed: {type(e).__name__}: {e}")))
