"""What a Responses or Chat request costs in prompt tokens, shared by both endpoints.

A prompt is a list of :class:`Segment` s (tool definitions, instructions, each message, each earlier
tool result) so that repeated prefixes can be priced as cached input. The per-message overhead
follows the Chat Completions accounting the recordings show (``"Say this is a test"`` as one user
message bills 12 prompt tokens: 3 per message, the role, the content, and 3 to prime the reply).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector.simulator import economics
from collector.simulator.core import count_tokens

TOKENS_PER_MESSAGE = 3
"""Framing tokens around every message (start, role separator, end)."""

REPLY_PRIMING_TOKENS = 3
"""Tokens that open the assistant's reply at the end of every prompt."""

FUNCTION_TOOL_OVERHEAD_TOKENS = 8
"""Framing tokens around one function tool definition beyond its JSON."""

SNAPSHOTS: dict[str, str] = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-4": "gpt-4-0613",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
}
"""Model aliases and the dated snapshot the API echoes for them."""


def snapshot(model: str) -> str:
    """The dated snapshot the API echoes for ``model``; unknown or dated names come back as given."""
    return SNAPSHOTS.get(model, model)


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a prompt: a digest of its content (for prefix caching) and its token count."""

    key: str
    tokens: int


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def message_segment(role: str, text: str) -> Segment:
    """A chat-style message with its framing overhead."""
    tokens = TOKENS_PER_MESSAGE + count_tokens(role) + count_tokens(text)
    return Segment(_digest("msg", role, text), tokens)


def text_segment(kind: str, text: str) -> Segment:
    """Raw text (a function call's arguments, a tool output) with the per-message framing."""
    return Segment(_digest(kind, text), TOKENS_PER_MESSAGE + count_tokens(text))


def search_segment(item_id: str, result_tokens: Sequence[int]) -> Segment:
    """A file_search call and its results as later prompts carry them."""
    return Segment(_digest("search", item_id), economics.search_payload_tokens(result_tokens))


def tools_segment(tools: Sequence[Mapping[str, Any]]) -> Segment | None:
    """The tool definitions every step's prompt carries, or ``None`` without tools."""
    if not tools:
        return None
    tokens = 0
    for tool in tools:
        if tool.get("type") == "file_search":
            tokens += economics.TOOL_STEP_OVERHEAD_TOKENS
        else:
            tokens += FUNCTION_TOOL_OVERHEAD_TOKENS + count_tokens(json.dumps(tool, sort_keys=True))
    return Segment(_digest("tools", json.dumps(list(tools), sort_keys=True)), tokens)


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string or a list of text parts (other parts skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, Mapping):
                t = part.get("text")
                if isinstance(t, str):
                    texts.append(t)
            elif isinstance(part, str):
                texts.append(part)
        return "\n".join(texts)
    return ""


def prompt_tokens(segments: Iterable[Segment]) -> int:
    """Billed prompt tokens: the segments plus the reply priming."""
    return sum(s.tokens for s in segments) + REPLY_PRIMING_TOKENS


class PrefixCache:
    """Which prompt prefixes the service has seen, to price repeated prefixes as cached input.

    A new prompt is compared with the longest earlier prompt prefix it starts with (segment by
    segment), and :func:`economics.cached_prefix` decides how much of that counts as cached.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _chain(segments: Sequence[Segment]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        h = ""
        total = 0
        for s in segments:
            h = _digest(h, s.key)
            total += s.tokens
            out.append((h, total))
        return out

    def cached(self, segments: Sequence[Segment]) -> int:
        """Cached input tokens of a prompt made of ``segments``; remembers its prefixes for later."""
        chain = self._chain(segments)
        total = prompt_tokens(segments)
        with self._lock:
            previous: int | None = None
            for h, tokens in chain:
                if h in self._seen:
                    previous = tokens
            self._seen.update(h for h, _ in chain)
        return economics.cached_prefix(total, previous)
