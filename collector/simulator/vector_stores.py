"""Simulated vector stores: stores, their files and file batches, search, processing and expiry.

Lifecycle rules (deterministic for a seed and an epoch):

- Attaching a file starts processing (``in_progress``, ``usage_bytes`` 0). It completes at
  ``ready_at = attached_at + base + per_1k * tokens / 1000`` simulated seconds, with ``base``,
  ``per_1k`` and the poll interval taken from the latency profile (:data:`PROCESSING`).
- Every request to these routes (and every :func:`collector.simulator.search.search`) first
  *settles* the world: files whose ``ready_at`` has passed complete (or fail: empty or binary
  files), stores whose ``expires_at`` has passed become ``expired``.
- A read of a single object that is still ``in_progress`` (store, store file, batch) answers with
  the ``openai-poll-after-ms`` header, and on a logical clock moves the clock by that interval: the
  wait the SDK's ``*_and_poll`` helpers are about to make. So polling converges in a fixed number of
  polls whatever the machine's speed.
- A file's ``usage_bytes`` is :func:`collector.simulator.search.usage_bytes` of its chunks (chunk
  text bytes + a 256 x float32 embedding per chunk). A store's ``usage_bytes`` is the sum over its
  completed files; an expired store keeps showing it but bills nothing.
- Every change of a store's *billed* bytes goes to the ledger as a ``StorageSample``, stamped with
  the time the change took effect (``ready_at`` for a completion, ``expires_at`` for an expiry, now
  for a removal or deletion).
- Activity (create, modify, attaching files, a search) moves ``last_active_at`` and therefore
  ``expires_at = last_active_at + days * 86400`` when ``expires_after`` is set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from collector.simulator.core import bad_request, json_response, not_found, read_json
from collector.simulator.search import (
    DEFAULT_CHUNK_OVERLAP_TOKENS,
    DEFAULT_MAX_CHUNK_SIZE_TOKENS,
    Chunk,
    SearchError,
    chunk_text,
    index_of,
    search,
    usage_bytes,
)
from collector.simulator.state import StorageSample, World

PROCESSING: dict[str, tuple[float, float, int]] = {
    "realistic": (1.0, 0.5, 1000),
    "fast": (0.02, 0.005, 10),
    "none": (0.0, 0.0, 0),
}
"""Latency profile -> (base seconds, seconds per 1000 tokens, poll interval ms) of file processing."""

AUTO_CHUNKING = {
    "type": "static",
    "static": {"max_chunk_size_tokens": DEFAULT_MAX_CHUNK_SIZE_TOKENS,
               "chunk_overlap_tokens": DEFAULT_CHUNK_OVERLAP_TOKENS},
}
POLL_HEADER = "openai-poll-after-ms"
_DAY = 86_400


# ---------------------------------------------------------------------------------------------- paging

@dataclass(slots=True)
class _Pending:
    ready_at: float
    chunks: list[Chunk]
    error: dict[str, str] | None


@dataclass(slots=True)
class _State:
    seq: dict[str, int] = field(default_factory=dict)
    """Creation order of every object ever listed (deleted ones too, so their ids stay cursors)."""
    pending: dict[tuple[str, str], _Pending] = field(default_factory=dict)
    billed: dict[str, int] = field(default_factory=dict)
    batches: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """vector_store_id -> batch_id -> batch object (its counts and status are derived on read)."""
    batch_files: dict[str, list[str]] = field(default_factory=dict)


def _state(world: World) -> _State:
    with world.lock:
        st = world.extra.get("vector_stores.state")
        if st is None:
            st = world.extra["vector_stores.state"] = _State()
    assert isinstance(st, _State)
    return st


def remember(world: World, scope: str, object_id: str) -> None:
    """Give a new object its place in list order (``scope`` separates e.g. one store's files)."""
    st = _state(world)
    st.seq.setdefault(f"{scope}:{object_id}", len(st.seq))


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Validated cursor-pagination parameters."""

    limit: int
    order: str
    after: str | None
    before: str | None


def list_query(request: web.Request, *, max_limit: int = 100,
               default_limit: int = 20) -> ListQuery | web.Response:
    """``limit``/``order``/``after``/``before`` from the query string, or the API's 400."""
    q = request.query
    raw = q.get("limit")
    limit = default_limit
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            return bad_request(f"Invalid 'limit': expected an integer, but got '{raw}' instead.",
                               param="limit", code="invalid_type")
        if limit < 1:
            return bad_request(f"Invalid 'limit': integer below minimum value. Expected a value >= 1, "
                               f"but got {limit} instead.", param="limit", code="integer_below_min_value")
        if limit > max_limit:
            return bad_request(f"Invalid 'limit': integer above maximum value. Expected a value <= "
                               f"{max_limit}, but got {limit} instead.", param="limit",
                               code="integer_above_max_value")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        return bad_request(f"Invalid value for 'order': expected one of 'asc' or 'desc', but got "
                           f"'{order}' instead.", param="order", code="invalid_value")
    return ListQuery(limit=limit, order=order, after=q.get("after") or None, before=q.get("before") or None)


def page(world: World, scope: str, items: list[dict[str, Any]], lq: ListQuery) -> web.Response:
    """One page of ``items`` (any order) as ``{object:"list", data, first_id, last_id, has_more}``.

    Items are ordered by creation (``created_at``, then creation order); ``after``/``before`` are
    ids of the previous page's last/first item, which may since have been deleted.
    """
    st = _state(world)

    def pos(object_id: str) -> int | None:
        return st.seq.get(f"{scope}:{object_id}")

    ordered = sorted(items, key=lambda it: (it["created_at"], pos(it["id"]) or 0),
                     reverse=lq.order == "desc")
    keyed = [(pos(it["id"]) or 0, it) for it in ordered]
    for name, cursor in (("after", lq.after), ("before", lq.before)):
        if cursor is None:
            continue
        at = pos(cursor)
        if at is None:
            return bad_request(f"Invalid '{name}': no object found with id '{cursor}'.", param=name,
                               code="invalid_value")
        idx = next((i for i, (p, _) in enumerate(keyed) if p == at), None)
        if idx is None:  # a deleted cursor: cut where it would have been
            forward = (lq.order == "asc")
            idx = next((i for i, (p, _) in enumerate(keyed) if (p > at) == forward), len(keyed))
            keyed = keyed[idx:] if name == "after" else keyed[:idx]
        else:
            keyed = keyed[idx + 1:] if name == "after" else keyed[:idx]
    if lq.before is not None and lq.after is None:
        data = [it for _, it in keyed[-lq.limit:]]
    else:
        data = [it for _, it in keyed[:lq.limit]]
    return json_response({
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(keyed) > len(data),
    })


# ------------------------------------------------------------------------------------------ lifecycle

def _profile(world: World) -> tuple[float, float, int]:
    return PROCESSING.get(world.config.latency, PROCESSING["fast"])


def _counts(statuses: list[str]) -> dict[str, int]:
    counts = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": len(statuses)}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return counts


def _refresh_store(world: World, vs_id: str) -> None:
    store = world.vector_stores[vs_id]
    files = world.vector_store_files.get(vs_id, {})
    store["file_counts"] = _counts([f["status"] for f in files.values()])
    store["usage_bytes"] = sum(f["usage_bytes"] for f in files.values() if f["status"] == "completed")
    if store["status"] != "expired":
        store["status"] = "in_progress" if store["file_counts"]["in_progress"] else "completed"


def _record(world: World, vs_id: str, at: float) -> None:
    """Put the store's billed bytes in the ledger when they changed."""
    st = _state(world)
    store = world.vector_stores.get(vs_id)
    billed = 0 if store is None or store["status"] == "expired" else int(store["usage_bytes"])
    if st.billed.get(vs_id, 0) != billed:
        st.billed[vs_id] = billed
        world.ledger.add_storage(StorageSample(at=at, vector_store_id=vs_id, usage_bytes=billed))


def _complete(world: World, vs_id: str, file_id: str, pending: _Pending) -> None:
    vs_file = world.vector_store_files[vs_id][file_id]
    if vs_file["status"] != "in_progress":
        return
    if pending.error is not None:
        vs_file["status"] = "failed"
        vs_file["last_error"] = pending.error
    else:
        index_of(world).put(vs_id, file_id, pending.chunks)
        vs_file["status"] = "completed"
        vs_file["usage_bytes"] = usage_bytes(pending.chunks)
    _refresh_store(world, vs_id)
    _record(world, vs_id, pending.ready_at)


def _expire(world: World, vs_id: str) -> None:
    store = world.vector_stores[vs_id]
    store["status"] = "expired"
    _record(world, vs_id, float(store["expires_at"]))


def settle(world: World) -> None:
    """Apply every completion and expiry that is due by the simulated clock, in time order."""
    st = _state(world)
    now = world.clock.now()
    with world.lock:
        events: list[tuple[float, int, str, str]] = []
        for (vs_id, file_id), p in st.pending.items():
            if p.ready_at <= now:
                events.append((p.ready_at, 0, vs_id, file_id))
        for vs_id, store in world.vector_stores.items():
            due = store["expires_at"] is not None and store["expires_at"] <= now
            if due and store["status"] != "expired":
                events.append((float(store["expires_at"]), 1, vs_id, ""))
        for _, kind, vs_id, file_id in sorted(events):
            if kind == 0:
                _complete(world, vs_id, file_id, st.pending.pop((vs_id, file_id)))
            elif world.vector_stores[vs_id]["status"] != "expired":
                _expire(world, vs_id)


def touch(world: World, vs_id: str) -> None:
    """Mark a store active now: moves ``last_active_at`` and, with an expiry policy, ``expires_at``."""
    store = world.vector_stores[vs_id]
    if store["status"] == "expired":
        return
    store["last_active_at"] = world.clock.stamp()
    policy = store.get("expires_after")
    store["expires_at"] = store["last_active_at"] + int(policy["days"]) * _DAY if policy else None


def _prepare(world: World, file_id: str,
             strategy: dict[str, Any]) -> tuple[list[Chunk], dict[str, str] | None]:
    data = world.file_bytes.get(file_id, b"")
    if b"\x00" in data:
        return [], {"code": "unsupported_file", "message": "The file type is not supported for file_search."}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], {"code": "invalid_file", "message": "The file could not be decoded as UTF-8 text."}
    static = strategy["static"]
    chunks = chunk_text(text, static["max_chunk_size_tokens"], static["chunk_overlap_tokens"])
    if not chunks:
        return [], {"code": "invalid_file", "message": "The file is empty."}
    return chunks, None


def attach(world: World, vs_id: str, file_id: str, strategy: dict[str, Any],
           attributes: dict[str, Any] | None, batch_id: str | None = None) -> dict[str, Any]:
    """Add a file to a store and start processing it; returns the ``vector_store.file`` object."""
    st = _state(world)
    files = world.vector_store_files.setdefault(vs_id, {})
    if file_id in files and files[file_id]["status"] in ("in_progress", "completed"):
        return files[file_id]
    if file_id in files:  # re-adding a failed or cancelled file starts again
        del files[file_id]
        index_of(world).drop(vs_id, file_id)
    chunks, error = _prepare(world, file_id, strategy)
    base, per_1k, _ = _profile(world)
    tokens = sum(c.tokens for c in chunks)
    now = world.clock.now()
    st.pending[(vs_id, file_id)] = _Pending(ready_at=now + base + per_1k * tokens / 1000, chunks=chunks,
                                            error=error)
    vs_file = {
        "id": file_id,
        "object": "vector_store.file",
        "usage_bytes": 0,
        "created_at": world.clock.stamp(),
        "vector_store_id": vs_id,
        "status": "in_progress",
        "last_error": None,
        "chunking_strategy": strategy,
        "attributes": attributes or {},
    }
    files[file_id] = vs_file
    remember(world, vs_id, file_id)
    if batch_id is not None:
        st.batch_files.setdefault(batch_id, []).append(file_id)
    touch(world, vs_id)
    _refresh_store(world, vs_id)
    return vs_file


def detach(world: World, vs_id: str, file_id: str) -> None:
    """Remove a file (and its chunks) from a store; the file object itself stays."""
    _state(world).pending.pop((vs_id, file_id), None)
    world.vector_store_files.get(vs_id, {}).pop(file_id, None)
    index_of(world).drop(vs_id, file_id)
    _refresh_store(world, vs_id)
    _record(world, vs_id, world.clock.now())


def delete_store(world: World, vs_id: str) -> None:
    """Delete a store and everything in it; its billed bytes drop to 0."""
    st = _state(world)
    for key in [k for k in st.pending if k[0] == vs_id]:
        del st.pending[key]
    index_of(world).drop(vs_id)
    world.vector_store_files.pop(vs_id, None)
    for batch_id in st.batches.pop(vs_id, {}):
        st.batch_files.pop(batch_id, None)
    del world.vector_stores[vs_id]
    _record(world, vs_id, world.clock.now())


# ----------------------------------------------------------------------------------------- validation

class VectorStoreError(Exception):
    """A request the API refuses: ``response`` is its error reply; ``status``, ``message``, ``param``
    and ``code`` are its fields."""

    def __init__(self, response: web.Response) -> None:
        error = json.loads(response.body)["error"] if isinstance(response.body, bytes) else {}
        super().__init__(error.get("message", "invalid request"))
        self.response = response
        self.status = response.status
        self.message: str = error.get("message", "invalid request")
        self.param: str | None = error.get("param")
        self.code: str | None = error.get("code")


_Invalid = VectorStoreError


def _check_int(value: Any, param: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(bad_request(f"Invalid type for '{param}': expected an integer, but got "
                                   f"{type(value).__name__} instead.", param=param, code="invalid_type"))
    if value < lo:
        raise _Invalid(bad_request(f"Invalid '{param}': integer below minimum value. Expected a value >= "
                                   f"{lo}, but got {value} instead.", param=param,
                                   code="integer_below_min_value"))
    if value > hi:
        raise _Invalid(bad_request(f"Invalid '{param}': integer above maximum value. Expected a value <= "
                                   f"{hi}, but got {value} instead.", param=param,
                                   code="integer_above_max_value"))
    return value


def chunking_strategy(value: Any) -> dict[str, Any]:
    """The resolved static strategy for a request's ``chunking_strategy`` (``None`` means auto).

    Raises ``_Invalid`` with the API's 400 for anything else than auto or a valid static strategy.
    """
    if value is None:
        return AUTO_CHUNKING
    if not isinstance(value, dict) or value.get("type") not in ("auto", "static"):
        raise _Invalid(bad_request("Invalid value for 'chunking_strategy.type': expected one of 'auto' or "
                                   "'static'.", param="chunking_strategy.type", code="invalid_value"))
    if value["type"] == "auto":
        return AUTO_CHUNKING
    static = value.get("static")
    if not isinstance(static, dict):
        raise _Invalid(bad_request("Missing required parameter: 'chunking_strategy.static'.",
                                   param="chunking_strategy.static", code="missing_required_parameter"))
    size = _check_int(static.get("max_chunk_size_tokens"), "chunking_strategy.static.max_chunk_size_tokens",
                      100, 4096)
    overlap = _check_int(static.get("chunk_overlap_tokens"), "chunking_strategy.static.chunk_overlap_tokens",
                         0, 4096)
    if overlap > size // 2:
        param = "chunking_strategy.static.chunk_overlap_tokens"
        raise _Invalid(bad_request(f"Invalid '{param}': must not exceed half of max_chunk_size_tokens "
                                   f"({size // 2}), but got {overlap}.", param=param, code="invalid_value"))
    return {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}


def _expires_after(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "last_active_at":
        raise _Invalid(bad_request("Invalid value for 'expires_after.anchor': expected 'last_active_at'.",
                                   param="expires_after.anchor", code="invalid_value"))
    days = _check_int(value.get("days"), "expires_after.days", 1, 365)
    return {"anchor": "last_active_at", "days": days}


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _Invalid(bad_request("Invalid 'metadata': expected an object of at most 16 string values.",
                                   param="metadata", code="invalid_value"))
    return value


def _attributes(value: Any, param: str = "attributes") -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16 or not all(
            isinstance(v, str | int | float | bool) for v in value.values()):
        raise _Invalid(bad_request(f"Invalid '{param}': expected an object of at most 16 string, number or "
                                   "boolean values.", param=param, code="invalid_value"))
    return value


def _file_ids(world: World, value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(bad_request(f"Invalid type for '{param}': expected an array of strings.", param=param,
                                   code="invalid_type"))
    for fid in value:
        if fid not in world.files:
            raise _Invalid(not_found("file", fid))
    return list(dict.fromkeys(value))


def create_store(world: World, body: dict[str, Any]) -> dict[str, Any]:
    """Create a vector store from a request body (``name``, ``file_ids``, ``chunking_strategy``,
    ``expires_after``, ``metadata``, ``description``) and return it, as ``POST /v1/vector_stores``
    does. For other route modules (e.g. inline ``tool_resources`` stores); raises
    :class:`VectorStoreError` with the API's 400/404."""
    with world.lock:
        settle(world)
        return _new_store(world, body)


def _new_store(world: World, body: dict[str, Any]) -> dict[str, Any]:
    strategy = chunking_strategy(body.get("chunking_strategy"))
    file_ids = _file_ids(world, body.get("file_ids", []), "file_ids")
    expires_after = _expires_after(body.get("expires_after"))
    metadata = _metadata(body.get("metadata"))
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise _Invalid(bad_request("Invalid type for 'name': expected a string.", param="name",
                                   code="invalid_type"))
    vs_id = world.ids.new("vs_", 32)
    now = world.clock.stamp()
    world.vector_stores[vs_id] = {
        "id": vs_id, "object": "vector_store", "created_at": now, "name": name,
        "description": body.get("description"), "usage_bytes": 0, "file_counts": _counts([]),
        "status": "completed", "expires_after": expires_after, "expires_at": None,
        "last_active_at": now, "metadata": metadata,
    }
    world.vector_store_files[vs_id] = {}
    remember(world, "", vs_id)
    touch(world, vs_id)
    for fid in file_ids:
        attach(world, vs_id, fid, strategy, None)
    return world.vector_stores[vs_id]


# --------------------------------------------------------------------------------------------- routes

Body = dict[str, Any]


class _Routes:
    """The HTTP handlers, bound to one world."""

    def __init__(self, world: World) -> None:
        self.w = world

    # helpers -----------------------------------------------------------------------------------
    def _store(self, vs_id: str) -> dict[str, Any]:
        store = self.w.vector_stores.get(vs_id)
        if store is None:
            raise _Invalid(not_found("vector store", vs_id))
        return store

    def _writable(self, vs_id: str) -> dict[str, Any]:
        store = self._store(vs_id)
        if store["status"] == "expired":
            raise _Invalid(bad_request(f"Vector store {vs_id} is expired and can no longer be modified.",
                                       param="vector_store_id", code="vector_store_expired"))
        return store

    def _poll(self, in_progress: bool) -> dict[str, str]:
        poll_ms = _profile(self.w)[2]
        if in_progress and self.w.clock.logical:
            self.w.clock.advance(poll_ms / 1000)
        return {POLL_HEADER: str(poll_ms)}

    def _batch(self, vs_id: str, batch_id: str) -> dict[str, Any]:
        batch = _state(self.w).batches.get(vs_id, {}).get(batch_id)
        if batch is None:
            raise _Invalid(not_found("vector store file batch", batch_id))
        files = self.w.vector_store_files.get(vs_id, {})
        statuses = [files[f]["status"] for f in _state(self.w).batch_files.get(batch_id, []) if f in files]
        batch["file_counts"] = _counts(statuses)
        if batch["status"] != "cancelled" or batch["file_counts"]["in_progress"]:
            batch["status"] = "in_progress" if batch["file_counts"]["in_progress"] else "completed"
        return batch

    def _run(self, fn: Callable[..., web.Response]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            body: Body = {}
            if request.method == "POST":
                parsed = await read_json(request)
                if isinstance(parsed, web.Response):
                    return parsed
                body = parsed
            with self.w.lock:
                settle(self.w)
                try:
                    return fn(request, body, **request.match_info)
                except _Invalid as exc:
                    return exc.response
                except SearchError as exc:
                    return exc.response()
        return handler

    # stores ------------------------------------------------------------------------------------
    def create_store(self, request: web.Request, body: Body) -> web.Response:
        return json_response(_new_store(self.w, body))

    def list_stores(self, request: web.Request, body: Body) -> web.Response:
        lq = list_query(request)
        if isinstance(lq, web.Response):
            return lq
        return page(self.w, "", list(self.w.vector_stores.values()), lq)

    def get_store(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        store = self._store(vs_id)
        return json_response(store, headers=self._poll(store["status"] == "in_progress"))

    def modify_store(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        store = self._store(vs_id)
        if "name" in body:
            store["name"] = body["name"]
        if "metadata" in body:
            store["metadata"] = _metadata(body["metadata"])
        if "expires_after" in body:
            store["expires_after"] = _expires_after(body["expires_after"])
        touch(self.w, vs_id)
        return json_response(store)

    def delete_store(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        self._store(vs_id)
        delete_store(self.w, vs_id)
        return json_response({"id": vs_id, "object": "vector_store.deleted", "deleted": True})

    def search_store(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        self._store(vs_id)
        query = body.get("query")
        if isinstance(query, str):
            queries = [query]
        elif isinstance(query, list) and query and all(isinstance(q, str) for q in query):
            queries = query
        else:
            raise _Invalid(bad_request("Missing required parameter: 'query'." if query is None else
                                       "Invalid type for 'query': expected a string or an array of strings.",
                                       param="query", code="missing_required_parameter" if query is None
                                       else "invalid_type"))
        ranking = body.get("ranking_options") or {}
        threshold = ranking.get("score_threshold", 0.0) if isinstance(ranking, dict) else 0.0
        hits = search(self.w, [vs_id], " ".join(queries), max_num_results=body.get("max_num_results", 10),
                      score_threshold=threshold, filters=body.get("filters"))
        return json_response({
            "object": "vector_store.search_results.page",
            "search_query": queries,
            "data": [{"file_id": h.file_id, "filename": h.filename, "score": h.score,
                      "attributes": dict(h.attributes), "content": [{"type": "text", "text": h.text}]}
                     for h in hits],
            "has_more": False,
            "next_page": None,
        })

    # store files -------------------------------------------------------------------------------
    def create_file(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        self._writable(vs_id)
        file_id = body.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise _Invalid(bad_request("Missing required parameter: 'file_id'.", param="file_id",
                                       code="missing_required_parameter"))
        if file_id not in self.w.files:
            raise _Invalid(not_found("file", file_id))
        strategy = chunking_strategy(body.get("chunking_strategy"))
        vs_file = attach(self.w, vs_id, file_id, strategy, _attributes(body.get("attributes")))
        return json_response(vs_file)

    def list_files(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        self._store(vs_id)
        return self._list_files(request, vs_id, list(self.w.vector_store_files.get(vs_id, {}).values()))

    def _list_files(self, request: web.Request, vs_id: str, items: list[dict[str, Any]]) -> web.Response:
        lq = list_query(request)
        if isinstance(lq, web.Response):
            return lq
        status = request.query.get("filter")
        if status is not None:
            if status not in ("in_progress", "completed", "failed", "cancelled"):
                return bad_request(f"Invalid value for 'filter': '{status}'.", param="filter",
                                   code="invalid_value")
            items = [f for f in items if f["status"] == status]
        return page(self.w, vs_id, items, lq)

    def _vs_file(self, vs_id: str, file_id: str) -> dict[str, Any]:
        self._store(vs_id)
        vs_file = self.w.vector_store_files.get(vs_id, {}).get(file_id)
        if vs_file is None:
            raise _Invalid(not_found("vector store file", file_id))
        return vs_file

    def get_file(self, request: web.Request, body: Body, vs_id: str,
            file_id: str) -> web.Response:
        vs_file = self._vs_file(vs_id, file_id)
        return json_response(vs_file, headers=self._poll(vs_file["status"] == "in_progress"))

    def update_file(self, request: web.Request, body: Body, vs_id: str,
            file_id: str) -> web.Response:
        vs_file = self._vs_file(vs_id, file_id)
        vs_file["attributes"] = _attributes(body.get("attributes")) or {}
        return json_response(vs_file)

    def file_content(self, request: web.Request, body: Body, vs_id: str,
            file_id: str) -> web.Response:
        self._vs_file(vs_id, file_id)
        chunks = index_of(self.w).get(vs_id, file_id)
        return json_response({"object": "vector_store.file_content.page",
                              "data": [{"type": "text", "text": c.text} for c in chunks],
                              "has_more": False, "next_page": None})

    def delete_file(self, request: web.Request, body: Body, vs_id: str,
            file_id: str) -> web.Response:
        self._vs_file(vs_id, file_id)
        detach(self.w, vs_id, file_id)
        return json_response({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})

    # file batches ------------------------------------------------------------------------------
    def create_batch(self, request: web.Request, body: Body, vs_id: str) -> web.Response:
        self._writable(vs_id)
        strategy = chunking_strategy(body.get("chunking_strategy"))
        attributes = _attributes(body.get("attributes"))
        entries: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        if body.get("file_ids") is not None:
            entries = [(f, strategy, attributes) for f in _file_ids(self.w, body["file_ids"], "file_ids")]
        elif isinstance(body.get("files"), list):
            for i, item in enumerate(body["files"]):
                if not isinstance(item, dict) or not isinstance(item.get("file_id"), str):
                    param = f"files[{i}].file_id"
                    raise _Invalid(bad_request(f"Missing required parameter: '{param}'.", param=param,
                                               code="missing_required_parameter"))
                _file_ids(self.w, [item["file_id"]], f"files[{i}].file_id")
                entries.append((item["file_id"], chunking_strategy(item.get("chunking_strategy", body.get(
                    "chunking_strategy"))), _attributes(item.get("attributes"), f"files[{i}].attributes")
                    or attributes))
        if not entries:
            raise _Invalid(bad_request("Missing required parameter: 'file_ids' (or 'files').",
                                       param="file_ids", code="missing_required_parameter"))
        batch_id = self.w.ids.new("vsfb_", 32)
        st = _state(self.w)
        st.batches.setdefault(vs_id, {})[batch_id] = {
            "id": batch_id, "object": "vector_store.files_batch", "created_at": self.w.clock.stamp(),
            "vector_store_id": vs_id, "status": "in_progress", "file_counts": _counts([]),
        }
        st.batch_files[batch_id] = []
        for fid, strat, attrs in entries:
            attach(self.w, vs_id, fid, strat, attrs, batch_id=batch_id)
        return json_response(self._batch(vs_id, batch_id))

    def get_batch(self, request: web.Request, body: Body, vs_id: str,
            batch_id: str) -> web.Response:
        self._store(vs_id)
        batch = self._batch(vs_id, batch_id)
        return json_response(batch, headers=self._poll(batch["status"] == "in_progress"))

    def cancel_batch(self, request: web.Request, body: Body, vs_id: str,
            batch_id: str) -> web.Response:
        self._store(vs_id)
        self._batch(vs_id, batch_id)
        st = _state(self.w)
        files = self.w.vector_store_files.get(vs_id, {})
        for fid in st.batch_files.get(batch_id, []):
            if fid in files and files[fid]["status"] == "in_progress":
                files[fid]["status"] = "cancelled"
                st.pending.pop((vs_id, fid), None)
        _refresh_store(self.w, vs_id)
        st.batches[vs_id][batch_id]["status"] = "cancelled"
        return json_response(self._batch(vs_id, batch_id))

    def list_batch_files(self, request: web.Request, body: Body, vs_id: str,
                         batch_id: str) -> web.Response:
        self._store(vs_id)
        self._batch(vs_id, batch_id)
        files = self.w.vector_store_files.get(vs_id, {})
        items = [files[f] for f in _state(self.w).batch_files.get(batch_id, []) if f in files]
        return self._list_files(request, vs_id, items)


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add the vector store routes (stores, store files, file batches, search)."""
    r = _Routes(world)
    base = "/v1/vector_stores"
    store = base + "/{vs_id}"
    vs_file = store + "/files/{file_id}"
    batch = store + "/file_batches/{batch_id}"
    router.add_post(base, r._run(r.create_store))
    router.add_get(base, r._run(r.list_stores))
    router.add_get(store, r._run(r.get_store))
    router.add_post(store, r._run(r.modify_store))
    router.add_delete(store, r._run(r.delete_store))
    router.add_post(store + "/search", r._run(r.search_store))
    router.add_post(store + "/files", r._run(r.create_file))
    router.add_get(store + "/files", r._run(r.list_files))
    router.add_get(vs_file, r._run(r.get_file))
    router.add_post(vs_file, r._run(r.update_file))
    router.add_delete(vs_file, r._run(r.delete_file))
    router.add_get(vs_file + "/content", r._run(r.file_content))
    router.add_post(store + "/file_batches", r._run(r.create_batch))
    router.add_get(batch, r._run(r.get_batch))
    router.add_post(batch + "/cancel", r._run(r.cancel_batch))
    router.add_get(batch + "/files", r._run(r.list_batch_files))


__all__ = [
    "AUTO_CHUNKING",
    "POLL_HEADER",
    "PROCESSING",
    "ListQuery",
    "VectorStoreError",
    "attach",
    "chunking_strategy",
    "create_store",
    "delete_store",
    "detach",
    "list_query",
    "page",
    "register",
    "remember",
    "settle",
    "touch",
]
