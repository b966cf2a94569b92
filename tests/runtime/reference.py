"""The slow, obviously right way: recompute the whole sequence each step, no cache."""

from __future__ import annotations

import numpy as np

from agent.runtime import TextGenerator


def greedy_no_cache(gen: TextGenerator, prompt_ids: list[int], steps: int) -> list[int]:
    lay = gen.layout
    ids, out = list(prompt_ids), []
    empty = np.zeros((1, lay.kv_heads, 0, lay.head_dim), dtype=lay.kv_dtype)
    for _ in range(steps):
        x = np.array([ids], dtype=np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if lay.has_position_ids:
            feeds["position_ids"] = np.arange(x.shape[1], dtype=np.int64)[None, :]
        for i in range(lay.num_layers):
            feeds[f"past_key_values.{i}.key"] = empty
            feeds[f"past_key_values.{i}.value"] = empty
        token = int(np.argmax(gen.engine.run(feeds)["logits"][0, -1]))
        out.append(token)
        ids.append(token)
    return out
