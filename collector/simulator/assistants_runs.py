"""Simulated Assistants v2 run endpoints: create (streamed or polled), create_and_run, tool outputs,
retrieve (which advances a polled run), list, cancel, and run steps.

Faults (``X-Runmeter-Fault`` or the server-wide setting) are picked for each request that makes the
model work (run creation and tool outputs): ``rate_limit``/``server_error`` answer before any run
exists; the others shape the run (see :mod:`assistants_engine`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from collector.simulator import fault_replies, latency
from collector.simulator.assistants_common import (
    active_run,
    add_message,
    api,
    body_of,
    create_thread_obj,
)
from collector.simulator.assistants_engine import RunEngine
from collector.simulator.assistants_objects import (
    ACTIVE,
    TERMINAL,
    InvalidRequest,
    check_include,
    normalize_tools,
    page,
    run_obj,
    step_for_wire,
)
from collector.simulator.assistants_runstate import (
    ClockPacing,
    Drop,
    Frame,
    Item,
    RunState,
    StreamPacing,
    module_state,
)
from collector.simulator.core import (
    bad_request,
    json_response,
    not_found,
    open_sse,
    query_list,
    sse_event,
)
from collector.simulator.faults import FAULT_HEADER, Fault, FaultPicker
from collector.simulator.state import FirstDelta, World

_DONE = sse_event("done", "[DONE]")
_LOCKS = "locks"


def _picker(world: World) -> FaultPicker:
    st = module_state(world)
    picker = st.get("picker")
    if picker is None:
        picker = st["picker"] = FaultPicker(world.config.fault, world.config.seed)
    assert isinstance(picker, FaultPicker)
    return picker


def _state(world: World, run_id: str) -> RunState:
    state = module_state(world)["runs"][run_id]
    assert isinstance(state, RunState)
    return state


def _lock(world: World, run_id: str) -> asyncio.Lock:
    locks: dict[str, asyncio.Lock] = module_state(world).setdefault(_LOCKS, {})
    return locks.setdefault(run_id, asyncio.Lock())


def _pacing(world: World, key: str, *, streamed: bool) -> StreamPacing:
    cls = StreamPacing if streamed else ClockPacing
    return cls(latency.profile(world.config.latency), world.clock, world.config.seed, key)


def poll_after_ms(world: World) -> str:
    """The ``openai-poll-after-ms`` a run GET advertises: about one queue delay of the profile."""
    return str(max(1, round(latency.profile(world.config.latency).queue_delay * 1000)))


def _pre_stream_fault(
    world: World, request: web.Request, model: str
) -> tuple[Fault | None, web.Response | None]:
    """The request's fault; ``rate_limit`` and ``server_error`` answer here, before any run exists."""
    try:
        fault = _picker(world).pick(request)
    except ValueError as exc:
        return None, bad_request(str(exc), param=FAULT_HEADER)
    if fault is not None and fault.mode == "rate_limit":
        return fault, fault_replies.rate_limited(model)
    if fault is not None and fault.mode == "server_error":
        return fault, fault_replies.server_error()
    return fault, None


async def _advance(world: World, state: RunState) -> None:
    """Move a polled run to its next status (``queued``, ``in_progress``, then its end)."""
    async with _lock(world, state.run_id):
        gen = state.pending
        if gen is None:
            return
        async for item in gen:
            if (
                isinstance(item, Frame)
                and item.event.count(".") == 2
                and item.event != "thread.run.created"
                and item.event.startswith("thread.run.")
            ):
                return
        state.pending = None


async def _stream(
    request: web.Request, world: World, engine: RunEngine, items: AsyncIterator[Item]
) -> web.StreamResponse:
    """Write the run's frames one flush each; a gone client leaves the run going on the server."""
    resp = await open_sse(request)
    live = True
    clean = True

    def detach() -> None:
        nonlocal live
        live = False
        engine.pacing = _pacing(world, engine.run["id"] + ":detached", streamed=False)

    async with _lock(world, engine.run["id"]):
        async for item in items:
            if isinstance(item, Drop):
                if live and request.transport is not None:
                    request.transport.close()
                detach()
                continue
            if not live:
                continue
            try:
                await resp.write(sse_event(item.event, item.data))
            except (ConnectionResetError, RuntimeError):
                detach()
                continue
            if item.first_text:
                world.ledger.add_first_delta(
                    FirstDelta(engine.run["id"], time.monotonic(), world.clock.now())
                )
            clean = clean and item.final
    if live:
        try:
            if clean:
                await resp.write(_DONE)
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
    return resp


def _tools_for_run(body: dict[str, Any], assistant: dict[str, Any]) -> list[dict[str, Any]]:
    if body.get("tools") is not None:
        return normalize_tools(body["tools"])
    return [dict(t) for t in assistant["tools"]]


def make_routes(world: World) -> list[web.RouteDef]:
    """The run routes."""

    async def start_run(
        request: web.Request,
        body: dict[str, Any],
        thread_id: str,
        include: bool,
        fault: Fault | None,
        prelude: list[Frame],
    ) -> web.StreamResponse:
        assistant = world.assistants[body["assistant_id"]]
        streamed = bool(body.get("stream"))
        run = run_obj(
            id_=world.ids.new("run_"),
            assistant=assistant,
            thread_id=thread_id,
            created_at=world.clock.stamp(),
            body=body,
            tools=_tools_for_run(body, assistant),
            streamed=streamed,
        )
        state = RunState(run_id=run["id"], include_content=include)
        world.runs[run["id"]] = run
        world.run_steps[run["id"]] = {}
        module_state(world)["runs"][run["id"]] = state
        engine = RunEngine(
            world, run, state, pacing=_pacing(world, run["id"], streamed=streamed), fault=fault
        )
        if streamed:
            return await _stream(request, world, engine, engine.start(prelude))
        state.pending = engine.start()
        await _advance(world, state)
        return json_response(run)

    def _check_assistant(body: dict[str, Any]) -> web.Response | None:
        if not body.get("assistant_id"):
            return bad_request(
                "Missing required parameter: 'assistant_id'.", "assistant_id", "missing_required_parameter"
            )
        if body["assistant_id"] not in world.assistants:
            return not_found("assistant", str(body["assistant_id"]))
        return None

    @api
    async def create_run(request: web.Request) -> web.StreamResponse:
        thread_id = request.match_info["thread_id"]
        include = check_include(query_list(request, "include"))
        body = await body_of(request)
        if thread_id not in world.threads:
            return not_found("thread", thread_id)
        bad = _check_assistant(body)
        if bad is not None:
            return bad
        if body.get("tools") is not None:
            normalize_tools(body["tools"])  # a 400 before anything happens
        busy = active_run(world, thread_id)
        if busy is not None:
            return bad_request(f"Thread {thread_id} already has an active run {busy}.")
        model = body.get("model") or world.assistants[body["assistant_id"]]["model"]
        fault, reply = _pre_stream_fault(world, request, model)
        if reply is not None:
            return reply
        extra = body.get("additional_messages") or []
        for i, m in enumerate(extra):
            add_message(world, thread_id, m, f"additional_messages[{i}].")
        return await start_run(request, body, thread_id, include, fault, [])

    @api
    async def create_and_run(request: web.Request) -> web.StreamResponse:
        include = check_include(query_list(request, "include"))
        body = await body_of(request)
        bad = _check_assistant(body)
        if bad is not None:
            return bad
        if body.get("tools") is not None:
            normalize_tools(body["tools"])
        model = body.get("model") or world.assistants[body["assistant_id"]]["model"]
        fault, reply = _pre_stream_fault(world, request, model)
        if reply is not None:
            return reply
        streamed = bool(body.get("stream"))
        default: dict[str, Any] = {"code_interpreter": {"file_ids": []}} if streamed else {}
        thread_body = dict(body.get("thread") or {})
        if body.get("tool_resources") is not None:
            thread_body["tool_resources"] = body["tool_resources"]
        thread = create_thread_obj(world, thread_body, default_resources=default, param="thread.")
        if isinstance(thread, web.Response):
            return thread
        prelude = [Frame("thread.created", json_dumps(thread))]
        return await start_run(request, body, thread["id"], include, fault, prelude)

    def _run(request: web.Request) -> dict[str, Any] | None:
        run = world.runs.get(request.match_info["run_id"])
        if run is None or run["thread_id"] != request.match_info["thread_id"]:
            return None
        return run

    async def get_run(request: web.Request) -> web.StreamResponse:
        run = _run(request)
        if run is None:
            return not_found("run", request.match_info["run_id"])
        state = _state(world, run["id"])
        if run["status"] in ACTIVE and state.pending is not None:
            await _advance(world, state)
        return json_response(run, headers={"openai-poll-after-ms": poll_after_ms(world)})

    async def list_runs(request: web.Request) -> web.StreamResponse:
        thread_id = request.match_info["thread_id"]
        if thread_id not in world.threads:
            return not_found("thread", thread_id)
        runs = [r for r in world.runs.values() if r["thread_id"] == thread_id]
        try:
            return json_response(page(runs, request.query))
        except InvalidRequest as exc:
            return bad_request(str(exc), exc.param, exc.code)

    @api
    async def modify_run(request: web.Request) -> web.StreamResponse:
        run = _run(request)
        if run is None:
            return not_found("run", request.match_info["run_id"])
        body = await body_of(request)
        if "metadata" in body:
            run["metadata"] = body["metadata"] or {}
        return json_response(run)

    async def cancel_run(request: web.Request) -> web.StreamResponse:
        run = _run(request)
        if run is None:
            return not_found("run", request.match_info["run_id"])
        if run["status"] in TERMINAL or run["status"] == "cancelling":
            return bad_request(f"Cannot cancel run with status '{run['status']}'.")
        state = _state(world, run["id"])
        state.cancel_requested = True
        if run["status"] == "requires_action" or (run["status"] == "queued" and state.pending is not None):
            engine = RunEngine(
                world, run, state, pacing=_pacing(world, run["id"], streamed=False), fault=None
            )
            state.pending = engine.cancel_now()
        run["status"] = "cancelling"
        return json_response(run)

    @api
    async def submit_tool_outputs(request: web.Request) -> web.StreamResponse:
        run = _run(request)
        if run is None:
            return not_found("run", request.match_info["run_id"])
        body = await body_of(request)
        if run["status"] != "requires_action":
            return bad_request(f'Runs in status "{run["status"]}" do not accept tool outputs.')
        outputs = body.get("tool_outputs")
        if not isinstance(outputs, list):
            return bad_request(
                "Missing required parameter: 'tool_outputs'.", "tool_outputs", "missing_required_parameter"
            )
        expected = [c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]]
        given = {str(o.get("tool_call_id")): str(o.get("output", "")) for o in outputs if isinstance(o, dict)}
        missing = [c for c in expected if c not in given]
        if missing:
            return bad_request(
                f"Expected tool outputs for call_ids {expected}, got {sorted(given)}.", "tool_outputs"
            )
        fault, reply = _pre_stream_fault(world, request, run["model"])
        if reply is not None:
            return reply
        state = _state(world, run["id"])
        streamed = bool(body.get("stream"))
        key = f"{run['id']}:outputs"
        engine = RunEngine(world, run, state, pacing=_pacing(world, key, streamed=streamed), fault=fault)
        if streamed:
            return await _stream(request, world, engine, engine.resume(given))
        state.pending = engine.resume(given)
        await _advance(world, state)
        return json_response(run)

    @api
    async def list_steps(request: web.Request) -> web.StreamResponse:
        include = check_include(query_list(request, "include"))
        run = _run(request)
        if run is None:
            return not_found("run", request.match_info["run_id"])
        steps = [step_for_wire(s, include) for s in world.run_steps.get(run["id"], {}).values()]
        return json_response(page(steps, request.query))

    @api
    async def get_step(request: web.Request) -> web.StreamResponse:
        include = check_include(query_list(request, "include"))
        run = _run(request)
        if run is None:
            return not_found("run", request.match_info["run_id"])
        step = world.run_steps.get(run["id"], {}).get(request.match_info["step_id"])
        if step is None:
            return not_found("run step", request.match_info["step_id"])
        return json_response(step_for_wire(step, include))

    base = "/v1/threads/{thread_id}/runs"
    return [
        web.post("/v1/threads/runs", create_and_run),
        web.post(base, create_run),
        web.get(base, list_runs),
        web.get(base + "/{run_id}", get_run),
        web.post(base + "/{run_id}", modify_run),
        web.post(base + "/{run_id}/cancel", cancel_run),
        web.post(base + "/{run_id}/submit_tool_outputs", submit_tool_outputs),
        web.get(base + "/{run_id}/steps", list_steps),
        web.get(base + "/{run_id}/steps/{step_id}", get_step),
    ]


def json_dumps(obj: Any) -> str:
    """Compact JSON as the API writes it in stream payloads."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
