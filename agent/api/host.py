"""The models behind the API: loading state, one bounded queue per model, the bundle switch.

States: `empty` (no model to serve: the daemon before its first install), `loading`,
`ready`, `switching` (a new bundle is being loaded), `failed` (the last load failed; the
message says why). /health answers 200 only in `ready`.

At a switch to a newly committed bundle, requests already submitted finish on the old
model (its queue is drained before it is closed); requests that arrive while the new one
loads wait up to `switch_wait_s` for it instead of failing, then are served by it. If
the new model does not load, the old one keeps serving.

The runtime (numpy, onnxruntime, tokenizers) is imported by the first load, not before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agent.api.chat import ChatTemplate, load_template
from agent.api.errors import ApiError
from agent.errors import FleetgenError

if TYPE_CHECKING:
    from agent.runtime.image import ImageGenerator, ImageRequest, ImageResult
    from agent.runtime.options import EngineOptions
    from agent.runtime.service import GenerationQueue, Knobs
    from agent.runtime.text import TextGenerator

log = logging.getLogger(__name__)

HostState = Literal["empty", "loading", "ready", "switching", "failed"]
_WAIT_POLL_S = 0.02


class ServedModel:
    """One loaded model: a text generator behind a GenerationQueue, or an image generator
    behind a lock (one image at a time) with the same bound on waiting requests."""

    def __init__(self, generator: TextGenerator | ImageGenerator, folder: Path, max_pending: int,
                 knobs: Knobs | None = None) -> None:
        from agent.runtime.service import GenerationQueue
        from agent.runtime.text import TextGenerator

        self.generator = generator
        self.folder = folder
        info = generator.info
        self.id = info.name
        self.label = f"{info.name}-{info.version}"
        self.aliases = frozenset({self.id, self.label})
        self.created = int(time.time())
        self.max_pending = max_pending
        self.queue: GenerationQueue | None = None
        self.chat: ChatTemplate | None = None
        self._image_lock = threading.Lock()
        self._image_waiting = 0
        if isinstance(generator, TextGenerator):
            self.kind: Literal["text", "image"] = "text"
            self.queue = GenerationQueue(generator, max_pending=max_pending, knobs=knobs)
            self.chat = load_template(folder)
        else:
            self.kind = "image"

    @property
    def text(self) -> TextGenerator:
        from agent.runtime.text import TextGenerator

        assert isinstance(self.generator, TextGenerator)
        return self.generator

    @property
    def depth(self) -> int:
        return self.queue.depth if self.queue is not None else self._image_waiting

    async def generate_image(self, request: ImageRequest) -> ImageResult:
        from agent.runtime.image import ImageGenerator
        from agent.runtime.service import QueueFullError

        generator = self.generator
        assert isinstance(generator, ImageGenerator)
        if self._image_waiting >= self.max_pending:
            raise QueueFullError(f"image queue is full ({self.max_pending} pending)")
        self._image_waiting += 1

        def run() -> ImageResult:
            with self._image_lock:
                return generator.generate(request)

        try:
            return await asyncio.to_thread(run)
        finally:
            self._image_waiting -= 1

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then release the model."""
        if self.queue is not None:
            self.queue.close(timeout)
        with self._image_lock:
            self.generator.close()


class ModelHost:
    def __init__(self, options: EngineOptions | None = None, *, max_pending: int = 8,
                 switch_wait_s: float = 10.0, knobs: Knobs | None = None) -> None:
        self.options = options
        self.max_pending = max_pending
        self.switch_wait_s = switch_wait_s
        self.knobs = knobs
        self._lock = threading.Lock()
        self._models: list[ServedModel] = []
        self.state: HostState = "empty"
        self.detail = "no model to serve"
        self.switches = 0

    # -- loading (any thread) -----------------------------------------------------------

    def _load_one(self, folder: Path) -> ServedModel:
        from agent.runtime import EngineOptions, load_model

        generator = load_model(Path(folder), self.options or EngineOptions())
        try:
            return ServedModel(generator, Path(folder), self.max_pending, self.knobs)
        except Exception:
            generator.close()
            raise

    def load(self, folders: Sequence[Path]) -> None:
        """Load the models to serve (blocking); on failure the host is `failed` and the error raised."""
        with self._lock:
            self.state, self.detail = "loading", f"loading {', '.join(str(f) for f in folders)}"
        loaded: list[ServedModel] = []
        try:
            for folder in folders:
                loaded.append(self._load_one(folder))
            ids = [m.id for m in loaded]
            if len(set(ids)) != len(ids):
                raise ApiError(500, f"two models share a name: {', '.join(ids)}")
        except FleetgenError as e:
            for m in loaded:
                m.close()
            with self._lock:
                self.state, self.detail = "failed", str(e)
            raise
        with self._lock:
            old, self._models = self._models, loaded
            self.state, self.detail = "ready", f"serving {', '.join(m.label for m in loaded)}"
        for m in old:
            m.close()
        log.info("API: %s", self.detail)

    def switch(self, folder: Path) -> None:
        """Serve `folder` instead of the current model(s) (blocking; see the module doc)."""
        with self._lock:
            previous_state = self.state
            self.state, self.detail = "switching", f"switching to {folder}"
        try:
            new = self._load_one(folder)
        except FleetgenError as e:
            log.error("API: cannot load %s (%s); the previous model keeps serving", folder, e)
            with self._lock:
                self.state = "ready" if self._models else "failed"
                self.detail = f"serving {', '.join(m.label for m in self._models)}" if self._models else str(e)
                if previous_state == "failed" and not self._models:
                    self.detail = str(e)
            return
        with self._lock:
            old, self._models = self._models, [new]
            self.state, self.detail = "ready", f"serving {new.label}"
            self.switches += 1
        log.info("API: now serving %s", new.label)
        for m in old:  # their queued requests finish first
            threading.Thread(target=m.close, name="fleetgen-api-retire", daemon=True).start()

    def switch_in_background(self, folder: Path) -> threading.Thread:
        thread = threading.Thread(target=self.switch, args=(Path(folder),), name="fleetgen-api-switch", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self._lock:
            old, self._models = self._models, []
            self.state, self.detail = "empty", "stopped"
        for m in old:
            m.close(timeout=5.0)

    # -- serving (the event loop) ---------------------------------------------------------

    @property
    def models(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def depth(self) -> int:
        return sum(m.depth for m in self.models)

    async def acquire(self, name: str | None, kind: Literal["text", "image"]) -> ServedModel:
        """The model a request names (or the first of its kind), waiting out a switch."""
        deadline = time.monotonic() + self.switch_wait_s
        while self.state == "switching" and time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_POLL_S)
        state = self.state
        if state != "ready":
            code = {"loading": "model_loading", "switching": "model_switching", "empty": "no_model"}.get(
                state, "model_failed")
            raise ApiError(503, f"model not ready: {self.detail}", code=code, retry_after_s=1)
        models = self.models
        if name is None:
            chosen = next((m for m in models if m.kind == kind), None)
            if chosen is None:
                raise ApiError(400, f"no {kind} model is served", param="model")
            return chosen
        chosen = next((m for m in models if name in m.aliases), None)
        if chosen is None:
            served = ", ".join(m.id for m in models)
            raise ApiError(404, f"The model `{name}` does not exist (served: {served})", param="model",
                           code="model_not_found")
        if chosen.kind != kind:
            route = "/v1/images/generations" if chosen.kind == "image" else "/v1/completions or /v1/chat/completions"
            raise ApiError(400, f"model {name} is a {chosen.kind} model; use {route}", param="model")
        return chosen
