"""Incremental Server-Sent Events decoding over bytes, with the SDK's ``SSEDecoder`` semantics.

Lines end in CR, LF or CRLF (a CRLF may be split across two chunks); ``:`` lines are comments;
multi-line ``data:`` joins with ``\\n``; one space after the colon is dropped; an event is dispatched
at a blank line, and a trailing event with no blank line after it is never dispatched (the SDK drops
it too). Work stays in ``bytes`` so a text delta the tap does not need is never decoded.
"""

from __future__ import annotations

from collections.abc import Callable

EventHandler = Callable[[bytes | None, list[bytes]], None]
"""Called per event with the ``event:`` name (``None`` if absent) and the raw ``data:`` lines."""

_CR = b"\r"
_LF = b"\n"
_BLANK = b"\n\n"


class SSEDecoder:
    """Feed bytes in any split; the handler is called once per complete event.

    Work goes by event block (the bytes up to a blank line) rather than by line: a tap that no longer
    needs some events (text deltas once the first token is seen) sets :attr:`skip`, a predicate on the
    raw block, and those blocks cost one ``split`` slot and one C-level check each.
    """

    __slots__ = ("_data", "_event", "_handler", "_pending", "_skip_lf", "skip")

    def __init__(self, handler: EventHandler) -> None:
        self._handler = handler
        self._pending: list[bytes] = []
        self._skip_lf = False
        self._event: bytes | None = None
        self._data: list[bytes] = []
        self.skip: Callable[[bytes], bool] | None = None
        """Blocks for which this returns true are dropped unparsed (``None``: parse every block)."""

    def feed(self, chunk: bytes) -> None:
        """Decode one chunk of the body; dispatches every event it completes."""
        if not chunk:
            return
        if self._skip_lf:
            # The previous chunk ended in CR: an LF opening this one is the rest of that CRLF.
            self._skip_lf = False
            if chunk[0] == 10:
                chunk = chunk[1:]
                if not chunk:
                    return
        if _CR in chunk:
            self._skip_lf = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", _LF).replace(_CR, _LF)
        pending = self._pending
        if _BLANK not in chunk and not (pending and chunk[0] == 10 and pending[-1][-1:] == _LF):
            pending.append(chunk)
            return
        if pending:
            pending.append(chunk)
            chunk = b"".join(pending)
            pending.clear()
        blocks = chunk.split(_BLANK)
        tail = blocks.pop()
        if tail:
            pending.append(tail)
        skip = self.skip
        for block in blocks:
            if skip is not None and skip(block):
                continue
            lines = block.split(_LF)
            lines.append(b"")  # the blank line that ended the block dispatches it
            self._lines(lines)

    def _lines(self, lines: list[bytes]) -> None:
        data = self._data
        for line in lines:
            if not line:
                if self._event is not None or data:
                    event = self._event
                    self._event = None
                    self._data = []
                    self._handler(event, data)
                    data = self._data
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line.startswith(b"event:"):
                value = line[6:]
                self._event = (value[1:] if value[:1] == b" " else value) or None
            elif line[0] != 58:  # not a ":" comment
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    self._event = value or None
                # id / retry / unknown fields carry nothing a tap uses


def join_data(lines: list[bytes]) -> bytes:
    """The event's ``data`` as the SDK sees it (lines joined with ``\\n``)."""
    return lines[0] if len(lines) == 1 else b"\n".join(lines)
