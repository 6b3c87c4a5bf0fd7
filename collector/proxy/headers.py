"""Which headers cross the proxy: RFC 9110 end-to-end headers pass, hop-by-hop headers stop here.

Pure functions over ``(name, value)`` pairs, so duplicates (``Set-Cookie``) and the sender's order
survive. Nothing here logs: the pairs carry ``Authorization``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "HOP_BY_HOP",
    "accept_encoding_for_tap",
    "end_to_end",
    "request_headers",
    "response_headers",
]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "trailers", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization",
})
"""Headers that describe one connection, not the message (RFC 9110 §7.6.1), in lower case."""

def end_to_end(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs without hop-by-hop headers, ``Proxy-*`` and the headers named in ``Connection``."""
    pairs = list(pairs)
    named = {token.strip().lower() for name, value in pairs if name.lower() == "connection"
             for token in value.split(",") if token.strip()}
    return [(n, v) for n, v in pairs
            if (low := n.lower()) not in HOP_BY_HOP and low not in named and not low.startswith("proxy-")]


def request_headers(pairs: Iterable[tuple[str, str]], *,
                    accept_encoding: str | None = None) -> list[tuple[str, str]]:
    """Headers to send upstream, in the caller's order.

    Without ``Host`` (the upstream's goes first), ``Expect`` (``100-continue`` was answered to the
    caller: the proxy reads the body itself) and ``Content-Length`` (the framing is per hop; the relay
    adds its own). ``accept_encoding`` replaces the caller's value (see :func:`accept_encoding_for_tap`).
    """
    out: list[tuple[str, str]] = []
    for name, value in end_to_end(pairs):
        low = name.lower()
        if low in ("host", "expect", "content-length"):
            continue
        if low == "accept-encoding" and accept_encoding is not None:
            value = accept_encoding
        out.append((name, value))
    return out


def response_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers to send back to the caller: every end-to-end header of the upstream response, in order
    (``Content-Length`` included: the body is relayed unchanged)."""
    return end_to_end(pairs)


def accept_encoding_for_tap(value: str, decodable: frozenset[str]) -> str | None:
    """``Accept-Encoding`` without the codings the tap cannot decode, or ``None`` to keep ``value``.

    The upstream then answers in a coding both the caller and the tap read; the caller's decoded
    body is the same. Only used for exchanges a tap records.
    """
    kept, dropped = [], False
    for item in value.split(","):
        coding = item.split(";", 1)[0].strip().lower()
        if not coding:
            continue
        if coding in decodable or coding in ("identity", "*"):
            kept.append(item.strip())
        else:
            dropped = True
    if not dropped:
        return None
    return ", ".join(kept) if kept else "identity"
