"""Simulated Assistants v2 endpoints: assistants, threads and messages; runs live in ``assistants_runs``.

Objects are stored as their wire dicts in the world's tables (``world.assistants``, ``world.threads``,
``world.messages``) and served in creation order, so lists page deterministically.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from collector.simulator import assistants_runs
from collector.simulator.assistants_common import (
    active_run,
    add_message,
    api,
    body_of,
    create_thread_obj,
    resources_or_404,
)
from collector.simulator.assistants_objects import message_for_list, normalize_tools, page
from collector.simulator.core import bad_request, json_response, not_found
from collector.simulator.state import World

# ---- assistants ---------------------------------------------------------------------------------


def _assistant_fields(
    world: World, body: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any] | web.Response:
    out = dict(base)
    for key in ("name", "description", "model", "instructions", "reasoning_effort", "response_format"):
        if key in body:
            out[key] = body[key]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = float(body[key])
    if "tools" in body:
        out["tools"] = normalize_tools(body["tools"])
    if "metadata" in body:
        out["metadata"] = body["metadata"] or {}
    if "tool_resources" in body:
        res = resources_or_404(world, body["tool_resources"])
        if isinstance(res, web.Response):
            return res
        out["tool_resources"] = res
    return out


def make_routes(world: World) -> list[web.RouteDef]:
    """The assistants, threads and messages routes."""

    @api
    async def create_assistant(request: web.Request) -> web.StreamResponse:
        body = await body_of(request)
        if not body.get("model"):
            return bad_request("Missing required parameter: 'model'.", "model", "missing_required_parameter")
        base = {
            "id": world.ids.new("asst_"),
            "object": "assistant",
            "created_at": world.clock.stamp(),
            "name": None,
            "description": None,
            "model": body["model"],
            "instructions": None,
            "tools": [],
            "top_p": 1.0,
            "temperature": 1.0,
            "reasoning_effort": None,
            "tool_resources": {},
            "metadata": {},
            "response_format": "auto",
        }
        obj = _assistant_fields(world, body, base)
        if isinstance(obj, web.Response):
            return obj
        world.assistants[obj["id"]] = obj
        return json_response(obj)

    @api
    async def list_assistants(request: web.Request) -> web.StreamResponse:
        return json_response(page(list(world.assistants.values()), request.query))

    def _get(request: web.Request) -> dict[str, Any] | None:
        return world.assistants.get(request.match_info["assistant_id"])

    async def get_assistant(request: web.Request) -> web.StreamResponse:
        obj = _get(request)
        return json_response(obj) if obj else not_found("assistant", request.match_info["assistant_id"])

    @api
    async def modify_assistant(request: web.Request) -> web.StreamResponse:
        obj = _get(request)
        if obj is None:
            return not_found("assistant", request.match_info["assistant_id"])
        new = _assistant_fields(world, await body_of(request), obj)
        if isinstance(new, web.Response):
            return new
        obj.update(new)
        return json_response(obj)

    async def delete_assistant(request: web.Request) -> web.StreamResponse:
        ident = request.match_info["assistant_id"]
        if world.assistants.pop(ident, None) is None:
            return not_found("assistant", ident)
        return json_response({"id": ident, "object": "assistant.deleted", "deleted": True})

    # ---- threads --------------------------------------------------------------------------------

    @api
    async def create_thread(request: web.Request) -> web.StreamResponse:
        res = create_thread_obj(world, await body_of(request), default_resources={})
        return res if isinstance(res, web.Response) else json_response(res)

    def _thread(request: web.Request) -> dict[str, Any] | None:
        return world.threads.get(request.match_info["thread_id"])

    async def get_thread(request: web.Request) -> web.StreamResponse:
        obj = _thread(request)
        return json_response(obj) if obj else not_found("thread", request.match_info["thread_id"])

    @api
    async def modify_thread(request: web.Request) -> web.StreamResponse:
        obj = _thread(request)
        if obj is None:
            return not_found("thread", request.match_info["thread_id"])
        body = await body_of(request)
        if "metadata" in body:
            obj["metadata"] = body["metadata"] or {}
        if "tool_resources" in body:
            res = resources_or_404(world, body["tool_resources"])
            if isinstance(res, web.Response):
                return res
            obj["tool_resources"] = res
        return json_response(obj)

    async def delete_thread(request: web.Request) -> web.StreamResponse:
        ident = request.match_info["thread_id"]
        if world.threads.pop(ident, None) is None:
            return not_found("thread", ident)
        world.messages.pop(ident, None)
        return json_response({"id": ident, "object": "thread.deleted", "deleted": True})

    # ---- messages -------------------------------------------------------------------------------

    @api
    async def create_message(request: web.Request) -> web.StreamResponse:
        thread = _thread(request)
        if thread is None:
            return not_found("thread", request.match_info["thread_id"])
        active = active_run(world, thread["id"])
        if active is not None:
            return bad_request(f"Can't add messages to {thread['id']} while a run {active} is active.")
        msg = add_message(world, thread["id"], await body_of(request))
        return json_response(msg)

    @api
    async def list_messages(request: web.Request) -> web.StreamResponse:
        thread = _thread(request)
        if thread is None:
            return not_found("thread", request.match_info["thread_id"])
        msgs = list(world.messages.get(thread["id"], {}).values())
        run_id = request.query.get("run_id")
        if run_id:
            msgs = [m for m in msgs if m.get("run_id") == run_id]
        result = page(msgs, request.query)
        result["data"] = [message_for_list(m) for m in result["data"]]
        return json_response(result)

    def _message(request: web.Request) -> dict[str, Any] | None:
        return world.messages.get(request.match_info["thread_id"], {}).get(request.match_info["message_id"])

    async def get_message(request: web.Request) -> web.StreamResponse:
        msg = _message(request)
        if msg is None:
            return not_found("message", request.match_info["message_id"])
        return json_response(message_for_list(msg))

    @api
    async def modify_message(request: web.Request) -> web.StreamResponse:
        msg = _message(request)
        if msg is None:
            return not_found("message", request.match_info["message_id"])
        body = await body_of(request)
        if "metadata" in body:
            msg["metadata"] = body["metadata"] or {}
        return json_response(message_for_list(msg))

    async def delete_message(request: web.Request) -> web.StreamResponse:
        msg = _message(request)
        if msg is None:
            return not_found("message", request.match_info["message_id"])
        del world.messages[msg["thread_id"]][msg["id"]]
        return json_response({"id": msg["id"], "object": "thread.message.deleted", "deleted": True})

    return [
        web.post("/v1/assistants", create_assistant),
        web.get("/v1/assistants", list_assistants),
        web.get("/v1/assistants/{assistant_id}", get_assistant),
        web.post("/v1/assistants/{assistant_id}", modify_assistant),
        web.delete("/v1/assistants/{assistant_id}", delete_assistant),
        # /v1/threads/runs (create_and_run) must be matched before /v1/threads/{thread_id}
        *assistants_runs.make_routes(world),
        web.post("/v1/threads", create_thread),
        web.get("/v1/threads/{thread_id}", get_thread),
        web.post("/v1/threads/{thread_id}", modify_thread),
        web.delete("/v1/threads/{thread_id}", delete_thread),
        web.post("/v1/threads/{thread_id}/messages", create_message),
        web.get("/v1/threads/{thread_id}/messages", list_messages),
        web.get("/v1/threads/{thread_id}/messages/{message_id}", get_message),
        web.post("/v1/threads/{thread_id}/messages/{message_id}", modify_message),
        web.delete("/v1/threads/{thread_id}/messages/{message_id}", delete_message),
    ]


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add this module's routes."""
    router.add_routes(make_routes(world))
