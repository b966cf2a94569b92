"""How to run a model (`EngineOptions`): importable without numpy or any engine, so the
daemon can hold options while no model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.runtime.errors import RequestError


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model. `threads` is what the power governor turns (None: library default);
    `providers` is the board profile's ONNX Runtime preference, short or full names;
    `tflite_delegates` the board's TFLite delegate libraries."""

    threads: int | None = None
    providers: tuple[str, ...] = field(default_factory=tuple)
    # TFLite delegate libraries to try, best first (firmware TfliteDelegate.library)
    tflite_delegates: tuple[str, ...] = field(default_factory=tuple)
    # ORT intra-op workers spin between parallel sections: None = decide at load from the
    # situation (agent.runtime.spin); True/False = as set (the governor sets False when a
    # power budget binds)
    spin: bool | None = None
    budget_binding: bool = False
    # the board profile gives the cores to the model (firmware BoardProfile.cores_dedicated):
    # spin unless a budget binds
    cores_dedicated: bool = False
    # `spin` was decided from the situation at load (not set by hand): the generation queue
    # decides it again when the budget starts or stops binding
    spin_auto: bool = False

    def __post_init__(self) -> None:
        if self.threads is not None and not 1 <= self.threads <= 256:
            raise RequestError(f"threads must be in 1..256, got {self.threads}")
