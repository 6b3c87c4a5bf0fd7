"""The simulator's search engine: chunking, the chunk index and scoring, as OpenAI's file_search does.

Chunking is OpenAI's static strategy over o200k tokens: windows of ``max_chunk_size_tokens`` that
start every ``max_chunk_size_tokens - chunk_overlap_tokens`` tokens, the last window reaching the end
of the document. ``auto`` means 800 tokens with a 400-token overlap. A document of ``n`` tokens thus
gives ``1 + ceil((n - max) / (max - overlap))`` chunks when ``n > max``, one when ``0 < n <= max``.

Scores are plausible and deterministic: a lexical similarity between the query and the chunk
(how many of the query's content words the chunk holds, and how often) blended with a seeded
per-(query, chunk) term, so every chunk scores in (0, 1) and relevant chunks score highest::

    score = 0.05 + 0.6 * lexical + 0.3 * noise(seed, query, file_id, chunk_index)

Route modules call :func:`search` (Assistants and Responses file_search, the vector store search
endpoint); it raises :class:`SearchError` carrying the API's error for unknown or expired stores and
invalid parameters, which :meth:`SearchError.response` turns into the API's reply.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from collector.simulator.core import _encoding, api_error

if TYPE_CHECKING:
    from collector.simulator.state import World

__all__ = [
    "DEFAULT_CHUNK_OVERLAP_TOKENS",
    "DEFAULT_MAX_CHUNK_SIZE_TOKENS",
    "EMBEDDING_BYTES",
    "Chunk",
    "Hit",
    "Index",
    "SearchError",
    "chunk_text",
    "default_max_num_results",
    "expected_chunk_count",
    "matches_filter",
    "search",
    "usage_bytes",
]

DEFAULT_MAX_CHUNK_SIZE_TOKENS = 800
DEFAULT_CHUNK_OVERLAP_TOKENS = 400

EMBEDDING_DIMENSIONS = 256
"""file_search embeds with text-embedding-3-large at 256 dimensions (wire reference section 7)."""

EMBEDDING_BYTES = EMBEDDING_DIMENSIONS * 4
"""Bytes of one stored embedding: 256 float32 values."""

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "if",
    "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "the", "this", "to", "was", "we", "what",
    "when", "where", "which", "who", "why", "will", "with", "you", "your",
})


class SearchError(Exception):
    """A search the API would refuse: ``status`` and the API's error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def response(self) -> web.Response:
        """The API's error reply for this failure."""
        return api_error(self.status, self.message, param=self.param, code=self.code)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored chunk of one file."""

    chunk_index: int
    text: str
    tokens: int
    terms: Mapping[str, int] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: a chunk of a file in a vector store, with its score."""

    file_id: str
    filename: str
    vector_store_id: str
    score: float
    text: str
    tokens: int
    """o200k token count of ``text``."""
    chunk_index: int
    attributes: Mapping[str, Any]


def _terms(text: str) -> Counter[str]:
    return Counter(w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)


def _token_windows(n: int, max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    if n <= 0:
        return []
    stride = max_tokens - overlap
    starts = [0]
    while starts[-1] + max_tokens < n:
        starts.append(starts[-1] + stride)
    return [(s, min(s + max_tokens, n)) for s in starts]


def expected_chunk_count(n_tokens: int, max_tokens: int = DEFAULT_MAX_CHUNK_SIZE_TOKENS,
                         overlap: int = DEFAULT_CHUNK_OVERLAP_TOKENS) -> int:
    """How many chunks static chunking makes of a document of ``n_tokens`` tokens."""
    return len(_token_windows(n_tokens, max_tokens, overlap))


def chunk_text(text: str, max_tokens: int = DEFAULT_MAX_CHUNK_SIZE_TOKENS,
               overlap: int = DEFAULT_CHUNK_OVERLAP_TOKENS) -> list[Chunk]:
    """Split ``text`` into static o200k token windows (special-token text is treated as plain text)."""
    enc = _encoding()
    tokens = enc.encode_ordinary(text)
    chunks = []
    for i, (start, end) in enumerate(_token_windows(len(tokens), max_tokens, overlap)):
        piece = enc.decode(tokens[start:end])
        # a window edge inside a multi-byte character decodes to U+FFFD, so recount the text itself
        chunks.append(Chunk(chunk_index=i, text=piece, tokens=len(enc.encode_ordinary(piece)),
                            terms=_terms(piece)))
    return chunks


def usage_bytes(chunks: Sequence[Chunk]) -> int:
    """Billed bytes of a file's chunks: each chunk's UTF-8 text plus its 256 x float32 embedding.

    This matches the real service's small files: a one-chunk file of 32 bytes bills 1056 bytes
    (32 + 1024) in the VectorStoresTests capture.
    """
    return sum(len(c.text.encode("utf-8")) + EMBEDDING_BYTES for c in chunks)


class Index:
    """The chunks of every file attached to every vector store, keyed by (store id, file id)."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[str, str], list[Chunk]] = {}

    def put(self, vector_store_id: str, file_id: str, chunks: list[Chunk]) -> None:
        """Store (or replace) a file's chunks in a store."""
        self._chunks[(vector_store_id, file_id)] = chunks

    def get(self, vector_store_id: str, file_id: str) -> list[Chunk]:
        """A file's chunks in a store (empty when none)."""
        return self._chunks.get((vector_store_id, file_id), [])

    def drop(self, vector_store_id: str, file_id: str | None = None) -> None:
        """Forget one file's chunks, or a whole store's."""
        if file_id is not None:
            self._chunks.pop((vector_store_id, file_id), None)
            return
        for key in [k for k in self._chunks if k[0] == vector_store_id]:
            del self._chunks[key]


def index_of(world: World) -> Index:
    """The world's chunk index (created on first use)."""
    with world.lock:
        idx = world.extra.get("search.index")
        if idx is None:
            idx = world.extra["search.index"] = Index()
    assert isinstance(idx, Index)
    return idx


def default_max_num_results(model: str) -> int:
    """file_search's default result count for ``model``: 5 for gpt-3.5-turbo, else 20.

    (Responses always echoes 20; Assistants uses this per-model default.)
    """
    return 5 if model.lower().startswith("gpt-3.5-turbo") else 20


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "in":
        return isinstance(expected, list) and actual in expected
    if op == "nin":
        return isinstance(expected, list) and actual not in expected
    if actual is None:
        return op == "ne"
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    try:
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        if op == "lte":
            return bool(actual <= expected)
    except TypeError:
        return False
    raise SearchError(400, f"Invalid value for 'filters.type': '{op}'.", param="filters.type",
                      code="invalid_value")


def matches_filter(attributes: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Whether a file's attributes satisfy a comparison (``eq ne gt gte lt lte in nin``) or compound
    (``and or``) filter; ``None`` matches everything."""
    if not flt:
        return True
    if not isinstance(flt, Mapping):
        raise SearchError(400, "Invalid 'filters': expected an object.", param="filters", code="invalid_type")
    kind = flt.get("type")
    if kind in ("and", "or"):
        subs = flt.get("filters")
        if not isinstance(subs, list):
            raise SearchError(400, "Invalid 'filters.filters': expected an array.", param="filters.filters")
        results = (matches_filter(attributes, s) for s in subs)
        return all(results) if kind == "and" else any(results)
    if not isinstance(flt.get("key"), str) or not isinstance(kind, str):
        raise SearchError(400, "Invalid 'filters': expected a comparison or compound filter.",
                          param="filters")
    return _compare(kind, attributes.get(flt["key"]), flt.get("value"))


def _noise(seed: int, query: str, file_id: str, chunk_index: int) -> float:
    digest = hashlib.sha256(f"{seed}\x1f{query}\x1f{file_id}\x1f{chunk_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _lexical(query_terms: Counter[str], chunk_terms: Mapping[str, int]) -> float:
    if not query_terms:
        return 0.0
    present = [t for t in query_terms if chunk_terms.get(t, 0) > 0]
    coverage = len(present) / len(query_terms)
    density = sum(min(1.0, math.log1p(chunk_terms[t]) / math.log1p(6)) for t in present) / len(query_terms)
    return 0.6 * coverage + 0.4 * density


def score(seed: int, query: str, file_id: str, chunk: Chunk,
          query_terms: Counter[str] | None = None) -> float:
    """The similarity of ``chunk`` to ``query``, in (0, 1)."""
    lex = _lexical(_terms(query) if query_terms is None else query_terms, chunk.terms)
    return 0.05 + 0.6 * lex + 0.3 * _noise(seed, query, file_id, chunk.chunk_index)


def search(world: World, vector_store_ids: list[str], query: str, *, max_num_results: int,
           score_threshold: float, filters: Mapping[str, Any] | None = None) -> list[Hit]:
    """Search the completed files of ``vector_store_ids`` for ``query``.

    Returns the ``min(max_num_results, chunks scoring above score_threshold)`` best chunks, in
    descending score order, deterministic for (query, store contents, seed). A search counts as
    activity: it moves the stores' ``last_active_at`` (and so their ``expires_at``).
    Raises :class:`SearchError` (404 unknown store, 400 expired store or bad parameters).
    """
    from collector.simulator import vector_stores  # the lifecycle imports this module

    if isinstance(max_num_results, bool) or not isinstance(max_num_results, int) \
            or not 1 <= max_num_results <= 50:
        raise SearchError(400, f"Invalid 'max_num_results': expected an integer between 1 and 50, "
                               f"but got {max_num_results!r} instead.", param="max_num_results",
                          code="invalid_value")
    if not isinstance(score_threshold, int | float) or not 0.0 <= float(score_threshold) <= 1.0:
        raise SearchError(400, f"Invalid 'score_threshold': expected a number between 0 and 1, "
                               f"but got {score_threshold!r} instead.",
                          param="ranking_options.score_threshold", code="invalid_value")
    if filters is not None and not isinstance(filters, Mapping):
        raise SearchError(400, "Invalid 'filters': expected a comparison or compound filter object.",
                          param="filters", code="invalid_type")
    seed = world.config.seed
    query_terms = _terms(query)
    index = index_of(world)
    scored: list[tuple[float, int, str, int, Hit]] = []
    with world.lock:
        vector_stores.settle(world)
        for order, vs_id in enumerate(vector_store_ids):
            store = world.vector_stores.get(vs_id)
            if store is None:
                raise SearchError(404, f"No vector store found with id '{vs_id}'.")
            if store["status"] == "expired":
                raise SearchError(400, f"Vector store {vs_id} is expired. Create a new vector store "
                                       "or update its expiration policy.", param="vector_store_ids",
                                  code="vector_store_expired")
            vector_stores.touch(world, vs_id)
            for file_id, vs_file in world.vector_store_files.get(vs_id, {}).items():
                if vs_file["status"] != "completed":
                    continue
                attributes = vs_file.get("attributes") or {}
                if not matches_filter(attributes, filters):
                    continue
                filename = world.files.get(file_id, {}).get("filename", file_id)
                for chunk in index.get(vs_id, file_id):
                    s = score(seed, query, file_id, chunk, query_terms)
                    if s <= score_threshold:
                        continue
                    hit = Hit(file_id=file_id, filename=filename, vector_store_id=vs_id, score=s,
                              text=chunk.text, tokens=chunk.tokens, chunk_index=chunk.chunk_index,
                              attributes=dict(attributes))
                    scored.append((-s, order, file_id, chunk.chunk_index, hit))
    scored.sort(key=lambda t: t[:4])
    return [t[4] for t in scored[:max_num_results]]
