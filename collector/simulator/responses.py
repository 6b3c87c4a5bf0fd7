"""Simulated Responses API: ``POST /v1/responses`` (streamed or not, foreground or background),
``GET``/``DELETE /v1/responses/{id}`` (``?stream=true&starting_after=N`` resumes a background stream),
``POST /v1/responses/{id}/cancel``, ``GET /v1/responses/{id}/input_items`` and the small part of
``/v1/conversations`` that a conversation-backed response needs.

A body is validated by :mod:`responses_request`, turned into a :class:`Plan` by :mod:`responses_plan`
(the search, the answer, the usage: all decided up front from seeded generators), then
:func:`_execute` plays the plan as events into an :class:`EventLog`. A foreground stream writes each
event to its socket as it is played; background streams and resumed streams tail the log. The event
order follows the recordings (wire reference §3.3): the file_citation annotation event comes right
before the delta carrying the sentence's full stop.

Faults (``X-Runmeter-Fault``): ``rate_limit``/``server_error`` answer 429/500 before anything;
``error_event`` sends ``{"type":"error","error":{...}}`` mid-text then ``response.failed`` (the SDK
raises ``APIError``); ``error_event_flat`` sends the flat error the SDK yields; ``drop`` cuts the
connection mid-text while the service finishes and bills the response (it can be retrieved, and a
background stream resumed); ``stall[:s]`` pauses mid-text; ``failed`` ends with ``response.failed``
before any output (usage null, not billed); ``incomplete`` truncates at half the answer;
``cancelled`` cancels a background response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import string
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from collector.simulator import prompts
from collector.simulator.core import (
    api_error,
    bad_request,
    json_response,
    not_found,
    open_sse,
    query_list,
    read_json,
    sse_event,
)
from collector.simulator.fault_replies import abort_connection, rate_limited, server_error
from collector.simulator.faults import Fault, FaultPicker
from collector.simulator.latency import Pacer, profile
from collector.simulator.responses_plan import FunctionPlan, MessagePlan, Plan, plan
from collector.simulator.responses_request import Invalid, input_segment, normalize_input, parse_request
from collector.simulator.search import SearchError
from collector.simulator.state import FirstDelta, UsageEntry, World

_OBFUSCATION_ALPHABET = string.ascii_letters + string.digits
_ERROR_MESSAGE = ("An error occurred while processing your request. You can retry your request, or "
                  "contact us through our help center at help.openai.com if the error persists.")


# --------------------------------------------------------------------------------------------------
# State


@dataclass
class EventLog:
    """Every event one response has produced, for background streams and resumed streams."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    done: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, event_type: str, payload: dict[str, Any]) -> None:
        """Record an event and wake the tailers."""
        self.events.append((event_type, payload))
        self._wake()

    def finish(self) -> None:
        """No more events will come."""
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def tail(self, after: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Events with ``sequence_number > after``, waiting for new ones until the log is done."""
        i = max(after + 1, 0)
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await self._changed.wait()


@dataclass
class Conversation:
    """A conversation object and the prompt segments of its items so far."""

    obj: dict[str, Any]
    segments: list[prompts.Segment] = field(default_factory=list)


@dataclass
class ResponsesState:
    """This module's private part of the world."""

    faults: FaultPicker
    cache: prompts.PrefixCache = field(default_factory=prompts.PrefixCache)
    history: dict[str, list[prompts.Segment]] = field(default_factory=dict)
    """response id -> prompt segments of its history, inputs and outputs (for previous_response_id)."""
    input_items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    conversations: dict[str, Conversation] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _state(world: World) -> ResponsesState:
    st = world.extra.get("responses")
    assert isinstance(st, ResponsesState)
    return st


# --------------------------------------------------------------------------------------------------
# Execution: play a plan as events


@dataclass
class Run:
    """One response being played: its plan, its log, its live writer (foreground streams)."""

    plan: Plan
    log: EventLog
    pacer: Pacer
    fault: Fault | None
    writer: web.StreamResponse | None = None
    request: web.Request | None = None
    cancel_requested: bool = False
    finished: bool = False
    drop_at: int | None = None
    first_delta_noted: bool = False
    seq: int = 0

    @property
    def response(self) -> dict[str, Any]:
        """The live response object."""
        return self.plan.response


def _snapshot(run: Run) -> dict[str, Any]:
    return _with_include(run.response, run.plan.req.include)


async def _write(run: Run, world: World, event_type: str, payload: dict[str, Any]) -> None:
    if run.writer is None:
        return
    try:
        await run.writer.write(sse_event(event_type, payload))
    except (ConnectionResetError, RuntimeError):
        run.writer = None  # the client went away: the service finishes the response anyway
        return
    if event_type == "response.output_text.delta" and payload.get("delta") and not run.first_delta_noted:
        run.first_delta_noted = True
        world.ledger.add_first_delta(FirstDelta(run.response["id"], time.monotonic(), world.clock.now()))


async def _emit(run: Run, world: World, event_type: str, **fields: Any) -> int:
    payload: dict[str, Any] = {"type": event_type, **fields, "sequence_number": run.seq}
    run.seq += 1
    run.log.append(event_type, payload)
    await _write(run, world, event_type, payload)
    return int(payload["sequence_number"])


def _obfuscation(run: Run, delta: str) -> dict[str, str]:
    if not run.plan.req.obfuscate:
        return {}
    # The recordings pad short deltas to 16 characters (delta + obfuscation).
    n = 16 - len(delta) if len(delta) < 16 else run.plan.rng_obf.randint(1, 15)
    return {"obfuscation": "".join(run.plan.rng_obf.choice(_OBFUSCATION_ALPHABET) for _ in range(n))}


def _store(world: World, run: Run) -> None:
    if run.plan.req.store:
        world.responses[run.response["id"]] = run.response


async def _fault_point(run: Run, world: World) -> bool:
    """Apply a mid-stream fault; ``True`` when the response must stop here."""
    fault = run.fault
    if fault is None:
        return False
    if fault.mode == "stall":
        seconds = fault.stall_seconds
        world.clock.advance(seconds)
        await asyncio.sleep(seconds)
        return False
    if fault.mode == "drop":
        run.drop_at = run.seq - 1
        if run.writer is not None and run.request is not None and run.request.transport is not None:
            run.request.transport.abort()
            run.writer = None
        return False
    if fault.mode in ("error_event", "error_event_flat"):
        err = {"type": "server_error", "code": "server_error", "message": _ERROR_MESSAGE, "param": None}
        if fault.mode == "error_event":
            await _emit(run, world, "error", error=err)
        else:
            await _emit(run, world, "error", code="server_error", message=_ERROR_MESSAGE, param=None)
        await _fail(run, world)
        return True
    return False


async def _fail(run: Run, world: World) -> None:
    run.response.update(status="failed", error={"code": "server_error", "message": _ERROR_MESSAGE})
    _store(world, run)
    await _emit(run, world, "response.failed", response=_snapshot(run))


def _cancelled(run: Run, world: World) -> bool:
    if not run.cancel_requested:
        return False
    run.response["status"] = "cancelled"
    _store(world, run)
    return True


async def _play_message(run: Run, world: World, msg: MessagePlan, index: int) -> bool:
    """The message's events; ``True`` when a fault stopped the response."""
    await _emit(run, world, "response.output_item.added", output_index=index,
                item={"id": msg.item_id, "type": "message", "status": "in_progress", "content": [],
                      "role": "assistant"})
    common = {"content_index": 0, "item_id": msg.item_id, "output_index": index}
    await _emit(run, world, "response.content_part.added", **common,
                part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
    fault_at = len(msg.pieces) // 2
    by_piece: dict[int, list[dict[str, Any]]] = {}
    for k, ann in msg.annotations:
        by_piece.setdefault(k, []).append(ann)
    n_ann = 0
    for k, piece in enumerate(msg.pieces):
        if _cancelled(run, world):
            return True
        await (run.pacer.first_token() if k == 0 else run.pacer.token())
        await _emit(run, world, "response.output_text.delta", **common, delta=piece, logprobs=[],
                    **_obfuscation(run, piece))
        for ann in by_piece.get(k, []):
            await _emit(run, world, "response.output_text.annotation.added", annotation=ann,
                        annotation_index=n_ann, **common)
            n_ann += 1
        if k == fault_at and await _fault_point(run, world):
            return True
    await _emit(run, world, "response.output_text.done", **common, logprobs=[], text=msg.text)
    await _emit(run, world, "response.content_part.done", **common, part=msg.part())
    await _emit(run, world, "response.output_item.done", output_index=index, item=msg.item())
    return False


async def _play_function(run: Run, world: World, fn: FunctionPlan, index: int) -> bool:
    await _emit(run, world, "response.output_item.added", output_index=index, item=fn.item("in_progress"))
    fault_at = len(fn.pieces) // 2
    for k, piece in enumerate(fn.pieces):
        await (run.pacer.first_token() if k == 0 else run.pacer.token())
        await _emit(run, world, "response.function_call_arguments.delta", item_id=fn.item_id,
                    output_index=index, delta=piece)
        if k == fault_at and await _fault_point(run, world):
            return True
    await _emit(run, world, "response.function_call_arguments.done", item_id=fn.item_id,
                output_index=index, arguments=fn.arguments)
    await _emit(run, world, "response.output_item.done", output_index=index, item=fn.item())
    return False


async def _execute(run: Run, world: World) -> None:
    """Play the plan; always finishes the log. The ledger bills completed and incomplete responses."""
    try:
        await _execute_inner(run, world)
    finally:
        run.finished = True
        run.log.finish()


async def _execute_inner(run: Run, world: World) -> None:
    p = run.plan
    resp = run.response
    await _emit(run, world, "response.created", response=_snapshot(run))
    _store(world, run)
    if p.req.background:
        await _emit(run, world, "response.queued", response=_snapshot(run))
        await run.pacer.queue()
        if _cancelled(run, world):
            return
        resp["status"] = "in_progress"
    await _emit(run, world, "response.in_progress", response=_snapshot(run))
    if run.fault is not None and run.fault.mode == "failed":
        await _fail(run, world)
        return
    if run.fault is not None and run.fault.mode == "cancelled" and p.req.background:
        run.cancel_requested = True
    if _cancelled(run, world):
        return
    index = 0
    done_items: list[dict[str, Any]] = []
    if p.reasoning_id is not None:
        await _emit(run, world, "response.output_item.added", output_index=index, item=p.reasoning_item())
        await run.pacer.first_token()
        await _emit(run, world, "response.output_item.done", output_index=index, item=p.reasoning_item())
        done_items.append(p.reasoning_item())
        index += 1
    if p.fs_id is not None:
        common = {"output_index": index, "item_id": p.fs_id}
        await _emit(run, world, "response.output_item.added", output_index=index,
                    item=p.fs_item("in_progress", False))
        await _emit(run, world, "response.file_search_call.in_progress", **common)
        await _emit(run, world, "response.file_search_call.searching", **common)
        await run.pacer.first_token()
        await _emit(run, world, "response.file_search_call.completed", **common)
        await _emit(run, world, "response.output_item.done", output_index=index,
                    item=p.fs_item("completed", True))
        done_items.append(p.fs_item("completed", True, with_results=True))
        index += 1
    if _cancelled(run, world):
        return
    if p.function is not None:
        if await _play_function(run, world, p.function, index):
            return
        done_items.append(p.function.item())
    if p.message is not None:
        if await _play_message(run, world, p.message, index):
            return
        done_items.append(p.message.item())
    if _cancelled(run, world):
        return
    resp.update(output=done_items, usage=p.usage, completed_at=world.clock.stamp(),
                service_tier="default" if resp["service_tier"] == "auto" else resp["service_tier"])
    if p.incomplete:
        resp.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    else:
        resp["status"] = "completed"
    _finish_bookkeeping(run, world)
    _store(world, run)
    await _emit(run, world, "response.incomplete" if p.incomplete else "response.completed",
                response=_snapshot(run))


def _finish_bookkeeping(run: Run, world: World) -> None:
    p = run.plan
    st = _state(world)
    u = p.usage
    world.ledger.add_usage(UsageEntry(
        at=world.clock.now(), api="responses", model=run.response["model"], object_id=run.response["id"],
        input_tokens=u["input_tokens"], cached_input_tokens=u["input_tokens_details"]["cached_tokens"],
        output_tokens=u["output_tokens"], reasoning_tokens=u["output_tokens_details"]["reasoning_tokens"],
        file_search_calls=1 if p.fs_id is not None else 0))
    if p.req.store:
        st.history[run.response["id"]] = p.history
    if p.req.conversation_id is not None:
        st.conversations[p.req.conversation_id].segments = list(p.history)


# --------------------------------------------------------------------------------------------------
# HTTP handlers


def _with_include(resp: Mapping[str, Any], include: list[str]) -> dict[str, Any]:
    """A stored response as ``GET`` shows it: file_search results only with the include."""
    out = json.loads(json.dumps(resp))
    if "file_search_call.results" not in include:
        for item in out.get("output", []):
            if item.get("type") == "file_search_call":
                item["results"] = None
    return out


def _public(resp: Mapping[str, Any]) -> dict[str, Any]:
    """A response as a JSON body (non-streamed replies carry ``billing``)."""
    out = dict(resp)
    keys = list(out)
    pos = keys.index("background") + 1
    items = list(out.items())
    items.insert(pos, ("billing", {"payer": "developer"}))
    return dict(items)


def _track(world: World, coro: Any) -> None:
    st = _state(world)
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
    st.tasks.add(task)
    task.add_done_callback(st.tasks.discard)


async def _tail_to(request: web.Request, world: World, run: Run, after: int,
                   drop_on_fault: bool) -> web.StreamResponse:
    sse = await open_sse(request)
    async for event_type, payload in run.log.tail(after):
        try:
            await sse.write(sse_event(event_type, payload))
        except (ConnectionResetError, RuntimeError):
            return sse
        if event_type == "response.output_text.delta" and payload.get("delta") and not run.first_delta_noted:
            run.first_delta_noted = True
            world.ledger.add_first_delta(FirstDelta(run.response["id"], time.monotonic(), world.clock.now()))
        if drop_on_fault and run.drop_at is not None and payload["sequence_number"] >= run.drop_at:
            return abort_connection(request, sse)
    await sse.write_eof()
    return sse


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``."""
    world: World = request.app["world"]
    st = _state(world)
    body = await read_json(request)
    if isinstance(body, web.Response):
        return body
    try:
        req = parse_request(body)
    except Invalid as exc:
        return exc.response()
    fault = st.faults.pick(request)
    if fault is not None and fault.mode == "rate_limit":
        return rate_limited(req.model)
    if fault is not None and fault.mode == "server_error":
        return server_error()
    if fault is not None and fault.mode == "drop" and not req.stream:
        return abort_connection(request)
    if req.previous_response_id is not None and req.previous_response_id not in st.history:
        return Invalid(f"Previous response with id '{req.previous_response_id}' not found.",
                       "previous_response_id", "previous_response_not_found").response()
    if req.conversation_id is not None and req.conversation_id not in st.conversations:
        return not_found("conversation", req.conversation_id)
    history = (st.history[req.previous_response_id] if req.previous_response_id is not None
               else st.conversations[req.conversation_id].segments if req.conversation_id is not None else [])
    try:
        with world.lock:
            p = plan(world, req, fault, history=history, cache=st.cache)
    except SearchError as exc:
        return exc.response()
    resp_id = p.response["id"]
    pacer = Pacer(profile(world.config.latency), world.clock, world.config.seed, resp_id)
    run = Run(plan=p, log=EventLog(), pacer=pacer, fault=fault)
    st.input_items[resp_id] = [
        {"id": world.ids.new("msg_", 48), "status": "completed", **item} if item.get("type") == "message"
        else dict(item) for item in req.input_items]
    if req.background:
        st.runs[resp_id] = run
        _store(world, run)
        _track(world, _execute(run, world))
        if req.stream:
            return await _tail_to(request, world, run, -1, drop_on_fault=True)
        return json_response(_public(_with_include(world.responses[resp_id], req.include)))
    if req.stream:
        sse = run.writer = await open_sse(request)
        run.request = request
        await _execute(run, world)
        if run.writer is None:
            return abort_connection(request, sse)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await run.writer.write_eof()
        return run.writer
    if fault is not None and fault.mode in ("error_event", "error_event_flat"):
        return server_error()
    await _execute(run, world)
    return json_response(_public(_with_include(run.response, req.include)))


async def retrieve(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``, or its event stream with ``?stream=true&starting_after=N``."""
    world: World = request.app["world"]
    st = _state(world)
    resp_id = request.match_info["response_id"]
    resp = world.responses.get(resp_id)
    if resp is None:
        return api_error(404, f"Response with id '{resp_id}' not found.", param=None)
    if request.query.get("stream", "").lower() == "true":
        run = st.runs.get(resp_id)
        if run is None:
            return bad_request("This response cannot be streamed because it wasn't created with "
                               "background=true.", param="stream")
        raw_after = request.query.get("starting_after")
        try:
            after = int(raw_after) if raw_after is not None else -1
        except ValueError:
            return bad_request(f"Invalid 'starting_after': expected an integer, but got '{raw_after}'.",
                               param="starting_after", code="invalid_type")
        return await _tail_to(request, world, run, after, drop_on_fault=False)
    return json_response(_public(_with_include(resp, query_list(request, "include"))))


async def delete(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/responses/{id}``."""
    world: World = request.app["world"]
    resp_id = request.match_info["response_id"]
    if world.responses.pop(resp_id, None) is None:
        return api_error(404, f"Response with id '{resp_id}' not found.")
    _state(world).history.pop(resp_id, None)
    return json_response({"id": resp_id, "object": "response", "deleted": True})


async def cancel(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/{id}/cancel`` (background responses only)."""
    world: World = request.app["world"]
    resp_id = request.match_info["response_id"]
    resp = world.responses.get(resp_id)
    if resp is None:
        return api_error(404, f"Response with id '{resp_id}' not found.")
    run = _state(world).runs.get(resp_id)
    if run is None:
        return bad_request("Only responses created with background=true can be cancelled.")
    if not run.finished:
        run.cancel_requested = True
        resp["status"] = "cancelled"
    elif resp["status"] not in ("cancelled",):
        return bad_request(f"Cannot cancel a response with status '{resp['status']}'.")
    return json_response(_public(_with_include(resp, [])))


async def input_items(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}/input_items`` (newest first unless ``order=asc``)."""
    world: World = request.app["world"]
    resp_id = request.match_info["response_id"]
    if resp_id not in world.responses:
        return api_error(404, f"Response with id '{resp_id}' not found.")
    items = list(_state(world).input_items.get(resp_id, []))
    if request.query.get("order", "desc") != "asc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    try:
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
    except ValueError:
        return bad_request("Invalid 'limit': expected an integer.", param="limit", code="invalid_type")
    page = items[:limit]
    return json_response({"object": "list", "data": page, "first_id": page[0].get("id") if page else None,
                          "last_id": page[-1].get("id") if page else None, "has_more": len(items) > limit})


async def create_conversation(request: web.Request) -> web.StreamResponse:
    """``POST /v1/conversations`` (items seed the history later responses pay for)."""
    world: World = request.app["world"]
    body = await read_json(request)
    if isinstance(body, web.Response):
        return body
    try:
        items = normalize_input(body.get("items") or [])
    except Invalid as exc:
        return exc.response()
    conv_id = world.ids.new("conv_", 48)
    obj = {"id": conv_id, "object": "conversation", "created_at": world.clock.stamp(),
           "metadata": body.get("metadata") or {}}
    _state(world).conversations[conv_id] = Conversation(obj, [input_segment(i) for i in items])
    return json_response(obj)


async def retrieve_conversation(request: web.Request) -> web.StreamResponse:
    """``GET /v1/conversations/{id}``."""
    world: World = request.app["world"]
    conv = _state(world).conversations.get(request.match_info["conversation_id"])
    if conv is None:
        return not_found("conversation", request.match_info["conversation_id"])
    return json_response(conv.obj)


async def delete_conversation(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/conversations/{id}``."""
    world: World = request.app["world"]
    conv_id = request.match_info["conversation_id"]
    if _state(world).conversations.pop(conv_id, None) is None:
        return not_found("conversation", conv_id)
    return json_response({"id": conv_id, "object": "conversation.deleted", "deleted": True})


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add this module's routes."""
    world.extra["responses"] = ResponsesState(faults=FaultPicker(world.config.fault, world.config.seed))
    router.add_post("/v1/responses", create)
    router.add_get("/v1/responses/{response_id}", retrieve)
    router.add_delete("/v1/responses/{response_id}", delete)
    router.add_post("/v1/responses/{response_id}/cancel", cancel)
    router.add_get("/v1/responses/{response_id}/input_items", input_items)
    router.add_post("/v1/conversations", create_conversation)
    router.add_get("/v1/conversations/{conversation_id}", retrieve_conversation)
    router.add_delete("/v1/conversations/{conversation_id}", delete_conversation)
