"""Streaming text out of token ids: incremental detokenization and stop strings.

Byte-level BPE splits UTF-8 characters across tokens, and SentencePiece-style decoders
change how a token renders depending on what precedes it. So we never decode one token
alone: we decode a small window of ids that starts a few tokens back (`prefix`), emit
only what it adds past the text already emitted, and hold back while the window ends
in U+FFFD (an incomplete UTF-8 sequence). The approach of Hugging Face TGI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"

Decode = Callable[[Sequence[int]], str]


# prompt tokens decoded before the first new one: enough for a decoder to know the new
# token is not at the start of the text (TGI keeps 5 as well)
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """`context`: the prompt's ids. A SentencePiece (Metaspace) decoder drops the leading
    space of the first token of a text, so "▁there" alone decodes to "there"; decoded after
    the prompt's last ids it adds " there", which is what follows the prompt."""

    def __init__(self, decode: Decode, context: Sequence[int] = ()) -> None:
        self._decode = decode
        self.ids: list[int] = list(context[-CONTEXT_TOKENS:]) if context else []
        self._prefix = 0
        self._read = len(self.ids)

    def add(self, token_id: int) -> str:
        """Append one id; return the newly stable text (possibly empty)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (at the end of generation), U+FFFD included."""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text) :]


class StopMatcher:
    """Cuts the stream at the first stop string, holding back text that could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string appears.

        A complete stop string ends the text only if no other stop string could start
        before it and still complete with text to come; otherwise everything from that
        earlier possible start is held until the next feed (or `flush`) decides.
        """
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._pending + text
        hit = self._first_hit(buf)
        safe = len(buf) - self._held_suffix(buf)  # a stop could still start at `safe`
        if hit is not None and hit <= safe:
            return self._stop(buf, hit)
        self._pending = buf[safe:]
        return buf[:safe]

    def flush(self) -> str:
        """At the end of generation: what was held, cut at a stop string it holds."""
        if self.stopped:
            return ""
        buf, self._pending = self._pending, ""
        hit = self._first_hit(buf)
        return buf if hit is None else self._stop(buf, hit)

    def _stop(self, buf: str, hit: int) -> str:
        self.stopped = True
        self._pending = ""
        return buf[:hit]

    def _first_hit(self, buf: str) -> int | None:
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
