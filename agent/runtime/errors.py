"""The runtime's exception family.

Everything a user can cause (a bad model folder, a bad request) exits 2 from a CLI;
`EngineError` is for failures while running a model that loaded fine.
"""

from __future__ import annotations

from agent.errors import FleetgenError, UsageError


class RuntimeFailure(FleetgenError):
    """Base of the runtime's errors."""


class ModelLoadError(RuntimeFailure):
    """A model folder cannot be loaded: missing or corrupt file, bad config, no tokenizer."""

    exit_code = 2


class LayoutError(ModelLoadError):
    """The graph's inputs/outputs do not match the layout the manifest declares."""


class UnknownEngineError(ModelLoadError):
    """The manifest names an engine this agent has no plugin for (or cannot import)."""


class RequestError(RuntimeFailure, UsageError):
    """A generation request is invalid (sampling values, prompt too long, wrong task)."""

    exit_code = 2


class ContextLengthError(RequestError):
    """The prompt does not fit in the model's context."""


class EngineError(RuntimeFailure):
    """The engine failed while running a model that loaded fine."""
