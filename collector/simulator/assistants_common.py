"""Helpers shared by the Assistants route modules: error mapping, bodies, tool resources, threads."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from collector.simulator.assistants_objects import ACTIVE, InvalidRequest, message_content, message_obj
from collector.simulator.core import bad_request, not_found, read_json
from collector.simulator.state import World

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api(handler: Handler) -> Handler:
    """Turn :class:`InvalidRequest` into the API's 400 body."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidRequest as exc:
            return bad_request(str(exc), param=exc.param, code=exc.code)

    return wrapped


async def body_of(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; anything else raises :class:`InvalidRequest`."""
    body = await read_json(request)
    if isinstance(body, web.Response):
        raise InvalidRequest("We could not parse the JSON body of your request.")
    return body


def tool_resources(world: World, raw: Any, param: str = "tool_resources") -> dict[str, Any]:
    """Validated ``tool_resources`` as the API echoes them (inline ``vector_stores`` are created)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    out: dict[str, Any] = {}
    if isinstance(raw.get("code_interpreter"), dict):
        out["code_interpreter"] = {"file_ids": list(raw["code_interpreter"].get("file_ids") or [])}
    fs = raw.get("file_search")
    if isinstance(fs, dict):
        ids = [str(i) for i in fs.get("vector_store_ids") or []]
        for spec in fs.get("vector_stores") or []:
            ids.append(create_inline_store(world, spec))
        for vs_id in ids:
            if vs_id not in world.vector_stores:
                raise LookupError(vs_id)
        out["file_search"] = {"vector_store_ids": ids}
    return out


def resources_or_404(world: World, raw: Any) -> dict[str, Any] | web.Response:
    try:
        return tool_resources(world, raw)
    except LookupError as exc:
        return not_found("vector store", str(exc.args[0]))


def active_run(world: World, thread_id: str) -> str | None:
    """The id of the thread's queued, running or waiting run, if any."""
    for run in world.runs.values():
        if run["thread_id"] == thread_id and run["status"] in ACTIVE:
            return str(run["id"])
    return None


def create_inline_store(world: World, spec: Any) -> str:
    """Create the vector store a ``tool_resources.file_search.vector_stores[]`` entry asks for."""
    from collector.simulator import vector_stores

    if not isinstance(spec, dict):
        raise InvalidRequest(
            "Invalid type for 'tool_resources.file_search.vector_stores[0]'.",
            "tool_resources.file_search.vector_stores",
            "invalid_type",
        )
    body = {"file_ids": list(spec.get("file_ids") or []), "metadata": spec.get("metadata") or {}}
    if spec.get("chunking_strategy") is not None:
        body["chunking_strategy"] = spec["chunking_strategy"]
    # the store module keeps creation in its route class; a 4xx from it is re-raised as ours
    with world.lock:
        vector_stores.settle(world)
        try:
            resp = vector_stores._Routes(world).create_store(None, body)  # type: ignore[arg-type]
        except Exception as exc:
            reply = getattr(exc, "response", None)
            text = reply.text if isinstance(reply, web.Response) and reply.text else str(exc)
            raise InvalidRequest(
                json.loads(text)["error"]["message"] if text.startswith("{") else text,
                "tool_resources.file_search.vector_stores",
            ) from None
    assert resp.text is not None
    return str(json.loads(resp.text)["id"])


def add_message(world: World, thread_id: str, body: dict[str, Any], param: str = "") -> dict[str, Any]:
    """Validate and append a message to a thread (``param`` prefixes error parameter names)."""
    role = body.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(
            f"Invalid value: {role!r}. Supported values are: 'user' and 'assistant'.",
            f"{param}role",
            "invalid_value",
        )
    if "content" not in body:
        raise InvalidRequest(
            f"Missing required parameter: '{param}content'.", f"{param}content", "missing_required_parameter"
        )
    msg = message_obj(
        id_=world.ids.new("msg_"),
        thread_id=thread_id,
        created_at=world.clock.stamp(),
        role=role,
        content=message_content(body["content"], f"{param}content"),
        attachments=body.get("attachments"),
        metadata=body.get("metadata"),
    )
    world.messages.setdefault(thread_id, {})[msg["id"]] = msg
    return msg


def create_thread_obj(
    world: World, body: dict[str, Any], *, default_resources: dict[str, Any], param: str = ""
) -> dict[str, Any] | web.Response:
    """Create a thread with its initial messages (also used by ``create_and_run``)."""
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise InvalidRequest(
            f"Invalid type for '{param}messages': expected an array.", f"{param}messages", "invalid_type"
        )
    res = resources_or_404(world, body.get("tool_resources"))
    if isinstance(res, web.Response):
        return res
    thread_id = world.ids.new("thread_")
    thread: dict[str, Any] = {
        "id": thread_id,
        "object": "thread",
        "created_at": world.clock.stamp(),
        "metadata": body.get("metadata") or {},
        "tool_resources": {**default_resources, **res},
    }
    for i, m in enumerate(messages):  # validate them all before anything is stored
        if not isinstance(m, dict):
            raise InvalidRequest(f"Invalid type for '{param}messages[{i}]'.", f"{param}messages[{i}]")
        message_content(m.get("content", ""), f"{param}messages[{i}].content")
    world.threads[thread_id] = thread
    world.messages[thread_id] = {}
    for i, m in enumerate(messages):
        add_message(world, thread_id, m, f"{param}messages[{i}].")
    return thread
