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


class SSEDecoder:
    """Feed bytes in any split; the handler is called once per complete event."""

    __slots__ = ("_data", "_event", "_handler", "_pending", "_skip_lf")

    def __init__(self, handler: EventHandler) -> None:
        self._handler = handler
        self._pending: list[bytes] = []
        self._skip_lf = False
        self._event: bytes | None = None
        self._data: list[bytes] = []

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
        if _LF not in chunk:
            self._pending.append(chunk)
            return
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        lines = chunk.split(_LF)
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
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
