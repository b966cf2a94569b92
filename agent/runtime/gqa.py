"""Decoding fused graphs whose attention is GroupQueryAttention, past and present in one buffer.

onnxruntime-genai's model builder emits such graphs (`search.past_present_share_buffer: true`
in genai_config.json): each layer's GroupQueryAttention takes `past_key_values.N.key|value`
of shape [batch, kv_heads, capacity, head_dim] and writes the new token's key and value into
that same tensor at its position (`present.N.*` has the same shape; when the two are one
buffer the kernel skips the copy). Positions come from `seqlens_k` = sum(attention_mask) - 1
and the valid length from `total_sequence_length` = the mask's length, both computed inside
the graph from the mask.

`SharedKVDecoder` has `KVDecoder`'s interface (reset, forward, length, capacity): one buffer
per layer for keys and one for values, preallocated to the sequence's capacity and bound as
both past and present once per sequence (in `reset`); a step binds only the new token, the
mask's length and the logits. No cache byte is copied per step, and the cache takes half the
memory of the Optimum layout's two ping-pong buffers (and GQA reads each KV head once
instead of once per query head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agent.runtime.decoder import DecoderLayout, binders, past_names, present_names
from agent.runtime.errors import ContextLengthError, EngineError
from agent.runtime.mapped import bind_all


class SharedKVDecoder:
    """Feeds tokens to a shared-buffer GQA graph; `forward` returns the last position's logits."""

    shared_buffer = True

    def __init__(self, session: Any, layout: DecoderLayout, context_length: int,
                 mapped: Mapping[str, np.ndarray] | None = None) -> None:
        self.session = session
        self.layout = layout
        self.context_length = context_length
        self.length = 0
        self.capacity = 0  # tokens the bound buffers hold
        self._io = session.io_binding()
        self._bind_in, self._bind_out, self._dev = binders(self._io)
        bind_all(self._bind_in, self._dev, mapped or {})  # weights mapped from the data file, bound for good
        self._mask = np.ones((1, context_length), dtype=np.int64)
        self._positions = np.arange(context_length, dtype=np.int64)[None, :]
        self._step_ids = np.zeros((1, 1), dtype=np.int64)
        self._step_logits = np.empty((1, 1, layout.vocab_size), dtype=layout.logits_dtype)
        self.buffers: list[np.ndarray] = []  # [key0, value0, key1, ...], each [1, kv_heads, capacity, head_dim]
        self._names = [
            (pin, pout)
            for i in range(layout.num_layers)
            for pin, pout in zip(past_names(i), present_names(i), strict=True)
        ]
        self.kv_binds = 0  # how often the cache was bound (once per sequence that grew it)

    def reset(self, capacity: int) -> None:
        """Start a new sequence that may grow to `capacity` tokens.

        Buffers only grow: a shorter sequence reuses the bound ones (GroupQueryAttention reads
        only the first `total_sequence_length` positions), so most requests bind nothing.
        """
        if not 1 <= capacity <= self.context_length:
            raise ContextLengthError(f"sequence of {capacity} tokens exceeds the context of {self.context_length}")
        if capacity > self.capacity:
            lay = self.layout
            shape = (1, lay.kv_heads, capacity, lay.head_dim)
            # np.empty maps pages lazily: only the positions a sequence writes become resident
            self.buffers = [np.empty(shape, dtype=lay.kv_dtype) for _ in range(2 * lay.num_layers)]
            kv_type, dims = lay.kv_dtype.type, list(shape)
            for (pin, pout), buf in zip(self._names, self.buffers, strict=True):
                ptr = buf.ctypes.data
                self._bind_in(pin, self._dev, kv_type, dims, ptr)
                self._bind_out(pout, self._dev, kv_type, dims, ptr)
            self.capacity = capacity
            self.kv_binds += 1
        self.length = 0

    def forward(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Run the graph on new tokens, extending the cache in place; logits of the last one."""
        n = len(token_ids)
        past, total = self.length, self.length + n
        if n == 0:
            raise EngineError("forward needs at least one token")
        if total > self.capacity:
            raise ContextLengthError(f"sequence of {total} tokens exceeds the reserved {self.capacity}")
        lay, bind_in, bind_out, dev, i64 = self.layout, self._bind_in, self._bind_out, self._dev, np.int64
        if n == 1:
            self._step_ids[0, 0] = int(token_ids[0])
            ids, logits = self._step_ids, self._step_logits
        else:
            ids = np.ascontiguousarray(np.asarray(token_ids, dtype=np.int64).reshape(1, n))
            logits = np.empty((1, n, lay.vocab_size), dtype=lay.logits_dtype)
        bind_in("input_ids", dev, i64, [1, n], ids.ctypes.data)
        # the mask's length is total_sequence_length inside the graph: a view of the ones
        bind_in("attention_mask", dev, i64, [1, total], self._mask.ctypes.data)
        if lay.has_position_ids:
            bind_in("position_ids", dev, i64, [1, n], self._positions.ctypes.data + 8 * past)
        bind_out("logits", dev, lay.logits_dtype.type, list(logits.shape), logits.ctypes.data)
        try:
            self.session.run_with_iobinding(self._io)
        except Exception as e:  # ORT's own exception types
            raise EngineError(f"decoder step at position {past} failed: {str(e).splitlines()[0]}") from None
        self.length = total
        return logits[0, -1].astype(np.float32, copy=False)
