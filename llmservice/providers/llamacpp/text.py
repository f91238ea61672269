"""Token bytes to text: whole UTF-8 characters only, and stop sequences cut exactly."""

from __future__ import annotations

import codecs


class TextStream:
    """Feed each token's bytes; get back the text that is safe to send.

    Bytes that end inside a multi-byte character wait for the next token. Text that
    could be the start of a stop sequence is held back until it is known not to be;
    when a stop sequence appears, the text before it is released and the stream ends.
    """

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""

    def push(self, piece: bytes) -> tuple[str, bool]:
        """Return (text to send, whether a stop sequence was reached)."""
        return self._release(self._held + self._decoder.decode(piece))

    def flush(self) -> tuple[str, bool]:
        """At the end of generation: whatever is still held, and whether it held a stop."""
        text, stopped = self._release(self._held + self._decoder.decode(b"", final=True))
        held, self._held = self._held, ""
        return text + ("" if stopped else held), stopped

    def _release(self, text: str) -> tuple[str, bool]:
        if not self._stop:
            return text, False
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = self._partial_stop_suffix(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that a stop sequence starts with."""
        longest = min(len(text), max(len(s) for s in self._stop) - 1)
        for size in range(longest, 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0
