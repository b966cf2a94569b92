"""One Optimum-layout decoder graph driven step by step with its KV cache kept in place.

The cache never round-trips through Python: two preallocated buffers per past tensor
are bound with ORT IO binding, the graph reads `past_key_values.N.*` from one and writes
`present.N.*` (past + new) into the other, and they swap roles after each step. The
concatenation inside the graph is the only copy left, which the layout itself implies.
Prefill and decode run the same graph (prefill with a past of length 0). Batch size 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.runtime.engine import TensorInfo
from agent.runtime.errors import ContextLengthError, EngineError, LayoutError
from agent.runtime.mapped import bind_all


@dataclass(frozen=True)
class DecoderLayout:
    """What the graph looks like, checked against the declared shape at load."""

    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    kv_dtype: np.dtype
    logits_dtype: np.dtype
    has_position_ids: bool

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.kv_dtype.itemsize


def past_names(i: int) -> tuple[str, str]:
    return f"past_key_values.{i}.key", f"past_key_values.{i}.value"


def present_names(i: int) -> tuple[str, str]:
    return f"present.{i}.key", f"present.{i}.value"


def check_layout(
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    num_layers: int,
    kv_heads: int,
    head_dim: int,
    vocab_size: int,
    origin: str,
) -> DecoderLayout:
    """Refuse a graph whose inputs/outputs do not match the Optimum decoder layout."""
    ins = {t.name: t for t in inputs}
    outs = {t.name: t for t in outputs}
    need_in = ["input_ids", "attention_mask"] + [n for i in range(num_layers) for n in past_names(i)]
    need_out = ["logits"] + [n for i in range(num_layers) for n in present_names(i)]
    missing = [n for n in need_in if n not in ins] + [n for n in need_out if n not in outs]
    if missing:
        shown = ", ".join(missing[:4]) + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else "")
        raise LayoutError(f"{origin}: graph lacks {shown} for a {num_layers}-layer decoder in the Optimum layout")
    extra_past = [n for n in ins if n.startswith("past_key_values.") and n not in need_in]
    if extra_past:
        raise LayoutError(f"{origin}: graph has {extra_past[0]} beyond the declared {num_layers} layers")
    known = {"input_ids", "attention_mask", "position_ids", *need_in}
    unknown = [n for n in ins if n not in known]
    if unknown:
        raise LayoutError(f"{origin}: graph input {unknown[0]!r} is not part of the decoder layout")
    past = ins[past_names(0)[0]]
    if len(past.shape) != 4:
        raise LayoutError(f"{origin}: {past.name} has rank {len(past.shape)}, expected 4")
    for axis, want, label in ((1, kv_heads, "kv heads"), (3, head_dim, "head_dim")):
        got = past.shape[axis]
        if isinstance(got, int) and got != want:
            raise LayoutError(f"{origin}: {past.name} has {got} {label}, declared {want}")
    logits = outs["logits"]
    got_vocab = logits.shape[-1] if logits.shape else None
    if isinstance(got_vocab, int) and got_vocab != vocab_size:
        raise LayoutError(f"{origin}: logits have vocab {got_vocab}, declared {vocab_size}")
    for name in ("input_ids", "attention_mask"):
        if ins[name].dtype != np.int64:
            raise LayoutError(f"{origin}: {name} is {ins[name].dtype}, expected int64")
    return DecoderLayout(num_layers, kv_heads, head_dim, vocab_size, past.dtype, logits.dtype, "position_ids" in ins)


class KVDecoder:
    """Feeds tokens to the graph; `forward` returns the last position's logits."""

    def __init__(self, session: Any, layout: DecoderLayout, context_length: int,
                 mapped: Mapping[str, np.ndarray] | None = None) -> None:
        self.session = session
        self.layout = layout
        self.context_length = context_length
        self.length = 0
        self.capacity = 0
        self._io = session.io_binding()
        self._mask = np.ones((1, context_length), dtype=np.int64)
        self._positions = np.arange(context_length, dtype=np.int64)[None, :]
        self._step_ids = np.zeros((1, 1), dtype=np.int64)
        self._step_logits = np.empty((1, 1, layout.vocab_size), dtype=layout.logits_dtype)
        self._bufs: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._ptrs: tuple[list[int], list[int]] = ([], [])
        self._mask_ptr = self._mask.ctypes.data
        self._pos_ptr = self._positions.ctypes.data
        self._step_ids_ptr = self._step_ids.ctypes.data
        self._step_logits_ptr = self._step_logits.ctypes.data
        self._kv_names = [
            (pin, pout)
            for i in range(layout.num_layers)
            for pin, pout in zip(past_names(i), present_names(i), strict=True)
        ]
        self._bind_in, self._bind_out, self._dev = self._binders()
        bind_all(self._bind_in, self._dev, mapped or {})

    def reset(self, capacity: int) -> None:
        """Start a new sequence that may grow to `capacity` tokens."""
        if not 1 <= capacity <= self.context_length:
            raise ContextLengthError(f"sequence of {capacity} tokens exceeds the context of {self.context_length}")
        lay = self.layout
        if capacity > self.capacity:
            # np.empty maps pages lazily, so only the part a sequence uses becomes resident.
            size = lay.kv_heads * capacity * lay.head_dim
            self._bufs = tuple(  # type: ignore[assignment]
                [np.empty(size, dtype=lay.kv_dtype) for _ in range(2 * lay.num_layers)] for _ in range(2)
            )
            self._ptrs = (
                [a.ctypes.data for a in self._bufs[0]],
                [a.ctypes.data for a in self._bufs[1]],
            )
            self.capacity = capacity
        self.length = 0

    def forward(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Run the graph on new tokens, extending the cache; logits of the last one, float32."""
        n = len(token_ids)
        past, total = self.length, self.length + n
        if n == 0:
            raise EngineError("forward needs at least one token")
        if total > self.capacity:
            raise ContextLengthError(f"sequence of {total} tokens exceeds the reserved {self.capacity}")
        if n == 1:
            self._step_ids[0, 0] = int(token_ids[0])
            ids, logits = self._step_ids, self._step_logits
        else:
            ids = np.ascontiguousarray(np.asarray(token_ids, dtype=np.int64).reshape(1, n))
            logits = np.empty((1, n, self.layout.vocab_size), dtype=self.layout.logits_dtype)
        self._bind(ids, logits, past, total)
        try:
            self.session.run_with_iobinding(self._io)
        except Exception as e:  # ORT's own exception types
            raise EngineError(f"decoder step at position {past} failed: {str(e).splitlines()[0]}") from None
        self._bufs = (self._bufs[1], self._bufs[0])
        self._ptrs = (self._ptrs[1], self._ptrs[0])
        self.length = total
        return logits[0, -1].astype(np.float32, copy=False)

    def _bind(self, ids: np.ndarray, logits: np.ndarray, past: int, total: int) -> None:
        bind_in, bind_out, dev, lay = self._bind_in, self._bind_out, self._dev, self.layout
        n = ids.shape[1]
        step = ids is self._step_ids
        i64 = np.int64
        bind_in("input_ids", dev, i64, [1, n], self._step_ids_ptr if step else ids.ctypes.data)
        bind_in("attention_mask", dev, i64, [1, total], self._mask_ptr)
        if lay.has_position_ids:
            bind_in("position_ids", dev, i64, [1, n], self._pos_ptr + 8 * past)
        logits_ptr = self._step_logits_ptr if step else logits.ctypes.data
        bind_out("logits", dev, lay.logits_dtype.type, list(logits.shape), logits_ptr)
        src, dst = self._ptrs
        kv_type = lay.kv_dtype.type
        past_shape = [1, lay.kv_heads, past, lay.head_dim]
        present_shape = [1, lay.kv_heads, total, lay.head_dim]
        for j, (pin, pout) in enumerate(self._kv_names):
            bind_in(pin, dev, kv_type, past_shape, src[j])
            bind_out(pout, dev, kv_type, present_shape, dst[j])

    def _binders(self) -> tuple[Any, Any, Any]:
        return binders(self._io)


def binders(io: Any) -> tuple[Any, Any, Any]:
    """(bind_input, bind_output, device) with signature (name, device, type, shape, ptr).

    The public `IOBinding.bind_input` builds a device object per call, which on a
    12-layer model is most of the ~0.13 ms the 52 bindings of a step cost; the
    underlying pybind methods take a device built once. Falls back to the public API
    if this onnxruntime build lacks them.
    """
    try:
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

        c_io = io._iobinding
        dev = OrtDevice.make("cpu", 0)._get_c_device()
        return c_io.bind_input, c_io.bind_output, dev
    except (ImportError, AttributeError):

        def bind_in(name: str, _dev: Any, t: Any, shape: list[int], ptr: int) -> None:
            io.bind_input(name, "cpu", 0, t, shape, ptr)

        def bind_out(name: str, _dev: Any, t: Any, shape: list[int], ptr: int) -> None:
            io.bind_output(name, "cpu", 0, t, shape, ptr)

        return bind_in, bind_out, None
