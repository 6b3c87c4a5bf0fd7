"""Simulated Chat Completions: ``POST /v1/chat/completions``, streamed (``data:`` lines only, ending in
``data: [DONE]``) or not.

Streamed chunks carry ``"usage": null``; with ``stream_options.include_usage`` one more chunk with
``"choices": []`` and the usage comes after the ``finish_reason`` chunk and right before ``[DONE]``
(wire reference §4). Chat has no file_search: the prompt is the messages (+ function tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector.simulator import economics, generate, prompts
from collector.simulator.core import api_error, json_response, open_sse, read_json, sse_event
from collector.simulator.fault_replies import abort_connection, rate_limited, server_error
from collector.simulator.faults import Fault, FaultPicker
from collector.simulator.latency import Pacer, profile
from collector.simulator.responses_plan import fill_schema
from collector.simulator.state import FirstDelta, UsageEntry, World

KNOWN_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n", "tools",
    "tool_choice", "parallel_tool_calls", "temperature", "top_p", "user", "metadata", "store",
    "service_tier", "seed", "response_format", "logprobs", "top_logprobs", "stop", "presence_penalty",
    "frequency_penalty", "logit_bias", "reasoning_effort", "modalities", "audio", "prediction",
    "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "verbosity", "web_search_options",
    "functions", "function_call",
})
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_ALPHABET = string.ascii_letters + string.digits
_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"


class Invalid(Exception):
    """A request the API refuses."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def response(self) -> web.Response:
        """The API's 400."""
        return api_error(400, self.message, param=self.param, code=self.code)


@dataclass
class ChatRequest:
    """A validated Chat Completions body."""

    body: dict[str, Any]
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    obfuscate: bool
    max_tokens: int | None
    n: int


def _budget(body: Mapping[str, Any], model: str) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if key == "max_tokens" and economics.is_reasoning_model(model):
            raise Invalid("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                          "'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise Invalid(f"Invalid '{key}': integer below minimum value. Expected a value >= 1, but got "
                          f"{value!r} instead.", key, "integer_below_min_value")
        return value
    return None


def parse_request(body: dict[str, Any]) -> ChatRequest:
    """Validate a body the way the API does; raises :class:`Invalid`."""
    unknown = sorted(k for k in body if k not in KNOWN_PARAMS)
    if unknown:
        raise Invalid(f"Unrecognized request argument supplied: {unknown[0]}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("you must provide a model parameter")
    messages = body.get("messages")
    if messages is None:
        raise Invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise Invalid("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise Invalid("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                      "empty array instead.", "messages", "empty_array")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise Invalid(f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]",
                          "invalid_type")
        if m.get("role") not in ROLES:
            raise Invalid(f"Invalid value: '{m.get('role')}'. Supported values are: 'system', 'assistant', "
                          "'user', 'function', 'tool', and 'developer'.", f"messages[{i}].role",
                          "invalid_value")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) and t.get("type") == "function"
                                              and isinstance(t.get("function"), Mapping)
                                              and t["function"].get("name") for t in tools):
        raise Invalid("Invalid 'tools': each tool must be {\"type\": \"function\", "
                      "\"function\": {\"name\": …}}.", "tools", "invalid_value")
    stream = bool(body.get("stream"))
    opts = body.get("stream_options")
    if opts is not None and not stream:
        raise Invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                      "stream_options", "invalid_value")
    opts = opts if isinstance(opts, Mapping) else {}
    n = body.get("n") or 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise Invalid(f"Invalid 'n': expected an integer between 1 and 128, but got {n!r} instead.", "n",
                      "invalid_value")
    return ChatRequest(body=body, model=model, messages=[dict(m) for m in messages], tools=list(tools),
                       stream=stream, include_usage=bool(opts.get("include_usage")),
                       obfuscate=opts.get("include_obfuscation") is not False,
                       max_tokens=_budget(body, model), n=n)


def _message_segment(m: Mapping[str, Any]) -> prompts.Segment:
    text = prompts.content_text(m.get("content"))
    if m.get("tool_calls"):
        text += json.dumps(m["tool_calls"], sort_keys=True)
    return prompts.message_segment(str(m.get("role")), text)


@dataclass
class ChoicePlan:
    """One choice: its pieces (text or tool-call arguments) and finish reason."""

    index: int
    pieces: list[str]
    finish_reason: str
    tool_call: dict[str, Any] | None = None
    """``{"id", "name"}`` when the choice is a tool call."""

    @property
    def text(self) -> str:
        """The served text (or arguments)."""
        return "".join(self.pieces)


@dataclass
class ChatPlan:
    """A completion decided in advance."""

    req: ChatRequest
    id: str
    created: int
    model: str
    fingerprint: str
    choices: list[ChoicePlan]
    usage: dict[str, Any]
    rng_obf: random.Random


def _chat_state(world: World) -> dict[str, Any]:
    st = world.extra["chat"]
    assert isinstance(st, dict)
    return st


def plan(world: World, req: ChatRequest, fault: Fault | None) -> ChatPlan:
    """Decide the whole completion (text, finish reasons, usage)."""
    cid = world.ids.new("chatcmpl-", 29)
    seed = world.config.seed
    rng = random.Random(f"chat:{seed}:{cid}")
    segments: list[prompts.Segment] = []
    tools_def = [t["function"] for t in req.tools]
    if tools_def:
        seg = prompts.tools_segment([{"type": "function", **t} for t in tools_def])
        if seg is not None:
            segments.append(seg)
    segments += [_message_segment(m) for m in req.messages]
    prompt = prompts.prompt_tokens(segments)
    cached = _chat_state(world)["cache"].cached(segments)
    last = req.messages[-1]
    user_text = next((prompts.content_text(m.get("content")) for m in reversed(req.messages)
                      if m.get("role") == "user"), "")
    choice_tool = req.body.get("tool_choice")
    wants_tool = bool(tools_def) and choice_tool != "none" and last.get("role") != "tool"
    fmt = req.body.get("response_format")
    spec = fmt.get("json_schema") if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema" else None
    json_schema = spec.get("schema") if isinstance(spec, Mapping) else None
    choices: list[ChoicePlan] = []
    completion = reasoning_total = 0
    for i in range(req.n):
        if wants_tool:
            forced = choice_tool.get("function", {}).get("name") if isinstance(choice_tool, Mapping) else None
            fn = next((t for t in tools_def if t["name"] == forced), tools_def[0])
            args = fill_schema(rng, fn.get("parameters"), " ".join(user_text.split()[:8]) or fn["name"])
            choice = ChoicePlan(i, generate.split_pieces(args, rng), "tool_calls",
                                {"id": world.ids.new("call_", 24), "name": fn["name"]})
        elif json_schema is not None:
            choice = ChoicePlan(i, generate.split_pieces(fill_schema(rng, json_schema, user_text[:80]), rng),
                                "stop")
        else:
            answer = generate.compose(rng, [], style="responses")
            choice = ChoicePlan(i, answer.pieces, "stop")
        visible = prompts.count_tokens(choice.text)
        reasoning = economics.reasoning_tokens(req.model, visible)
        budget = req.max_tokens
        if fault is not None and fault.mode == "incomplete":
            budget = max(1, (visible + reasoning) // 2)
        if budget is not None and visible + reasoning > budget:
            reasoning = min(reasoning, budget)
            kept: list[str] = []
            for p in choice.pieces:
                if prompts.count_tokens("".join([*kept, p])) > budget - reasoning:
                    break
                kept.append(p)
            choice.pieces = kept
            choice.finish_reason = "length"
        completion += reasoning + prompts.count_tokens(choice.text)
        reasoning_total += reasoning
        choices.append(choice)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": reasoning_total, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    fingerprint = "fp_" + hashlib.sha256(prompts.snapshot(req.model).encode()).hexdigest()[:10]
    return ChatPlan(req=req, id=cid, created=world.clock.stamp(), model=prompts.snapshot(req.model),
                    fingerprint=fingerprint, choices=choices, usage=usage,
                    rng_obf=random.Random(f"obfuscation:{seed}:{cid}"))


def _completion(p: ChatPlan) -> dict[str, Any]:
    choices = []
    for c in p.choices:
        message: dict[str, Any] = {"role": "assistant", "content": None if c.tool_call else c.text,
                                   "refusal": None, "annotations": []}
        if c.tool_call:
            message["tool_calls"] = [{"id": c.tool_call["id"], "type": "function",
                                      "function": {"name": c.tool_call["name"], "arguments": c.text}}]
        choices.append({"index": c.index, "message": message, "logprobs": None,
                        "finish_reason": c.finish_reason})
    return {"id": p.id, "object": "chat.completion", "created": p.created, "model": p.model,
            "choices": choices, "usage": p.usage, "service_tier": _tier(p),
            "system_fingerprint": p.fingerprint}


def _tier(p: ChatPlan) -> str:
    tier = p.req.body.get("service_tier")
    return "default" if tier in (None, "auto") else str(tier)


def _bill(world: World, p: ChatPlan) -> None:
    u = p.usage
    world.ledger.add_usage(UsageEntry(
        at=world.clock.now(), api="chat", model=p.model, object_id=p.id, input_tokens=u["prompt_tokens"],
        cached_input_tokens=u["prompt_tokens_details"]["cached_tokens"], output_tokens=u["completion_tokens"],
        reasoning_tokens=u["completion_tokens_details"]["reasoning_tokens"]))


class _Streamer:
    """Writes one completion's chunks, applying a mid-stream fault."""

    def __init__(self, request: web.Request, world: World, p: ChatPlan, fault: Fault | None,
                 pacer: Pacer) -> None:
        self.request, self.world, self.p, self.fault, self.pacer = request, world, p, fault, pacer
        self.sse: web.StreamResponse | None = None
        self.noted_first = False

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None,
              obfuscate: bool = True) -> dict[str, Any]:
        """One ``chat.completion.chunk``."""
        p = self.p
        out: dict[str, Any] = {"id": p.id, "object": "chat.completion.chunk", "created": p.created,
                               "model": p.model, "service_tier": _tier(p),
                               "system_fingerprint": p.fingerprint, "choices": choices, "usage": usage}
        if obfuscate and p.req.obfuscate:
            n = p.rng_obf.randint(1, 12)
            out["obfuscation"] = "".join(p.rng_obf.choice(_ALPHABET) for _ in range(n))
        return out

    async def send(self, payload: dict[str, Any] | str) -> bool:
        """Write one ``data:`` line; ``False`` once the client is gone."""
        if self.sse is None:
            return False
        try:
            await self.sse.write(sse_event(None, payload))
        except (ConnectionResetError, RuntimeError):
            self.sse = None
            return False
        return True

    async def fault_point(self) -> str | None:
        """Apply the fault in the middle of the text; returns ``"stop"`` or ``"drop"`` to end early."""
        f = self.fault
        if f is None:
            return None
        if f.mode == "stall":
            seconds = f.stall_seconds
            self.world.clock.advance(seconds)
            await asyncio.sleep(seconds)
        elif f.mode in ("error_event", "error_event_flat", "failed"):
            await self.send({"error": {"message": _ERROR_MESSAGE, "type": "server_error", "param": None,
                                       "code": None}})
            return "stop"
        elif f.mode == "drop":
            return "drop"
        return None

    async def run(self) -> web.StreamResponse:
        """Stream the completion."""
        p = self.p
        self.sse = await open_sse(self.request)
        await self.pacer.queue()
        for c in p.choices:
            first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
            if c.tool_call:
                first = {"role": "assistant", "content": None, "tool_calls": [
                    {"index": 0, "id": c.tool_call["id"], "type": "function",
                     "function": {"name": c.tool_call["name"], "arguments": ""}}], "refusal": None}
            await self.send(self.chunk([{"index": c.index, "delta": first, "logprobs": None,
                                         "finish_reason": None}]))
            fault_at = len(c.pieces) // 2
            for k, piece in enumerate(c.pieces):
                await (self.pacer.first_token() if k == 0 else self.pacer.token())
                delta: dict[str, Any] = {"content": piece}
                if c.tool_call:
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                await self.send(self.chunk([{"index": c.index, "delta": delta, "logprobs": None,
                                             "finish_reason": None}]))
                if not c.tool_call and piece and not self.noted_first and self.sse is not None:
                    self.noted_first = True
                    self.world.ledger.add_first_delta(
                        FirstDelta(p.id, time.monotonic(), self.world.clock.now()))
                if c.index == 0 and k == fault_at:
                    outcome = await self.fault_point()
                    if outcome == "stop":
                        return self.sse or web.StreamResponse()
                    if outcome == "drop":
                        _bill(self.world, p)  # the service finished the completion; only the client lost it
                        return abort_connection(self.request, self.sse)
            await self.send(self.chunk([{"index": c.index, "delta": {}, "logprobs": None,
                                         "finish_reason": c.finish_reason}]))
        _bill(self.world, p)
        if p.req.include_usage:
            await self.send(self.chunk([], p.usage, obfuscate=False))
        await self.send("[DONE]")
        if self.sse is None:
            return web.StreamResponse()
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.sse.write_eof()
        return self.sse


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    world: World = request.app["world"]
    body = await read_json(request)
    if isinstance(body, web.Response):
        return body
    try:
        req = parse_request(body)
    except Invalid as exc:
        return exc.response()
    fault = _chat_state(world)["faults"].pick(request)
    if fault is not None and fault.mode == "rate_limit":
        return rate_limited(req.model)
    if fault is not None and fault.mode == "server_error":
        return server_error()
    if fault is not None and fault.mode == "drop" and not req.stream:
        return abort_connection(request)
    with world.lock:
        p = plan(world, req, fault)
    pacer = Pacer(profile(world.config.latency), world.clock, world.config.seed, p.id)
    if req.stream:
        return await _Streamer(request, world, p, fault, pacer).run()
    if fault is not None and fault.mode in ("error_event", "error_event_flat", "failed"):
        return server_error()
    await pacer.queue()
    await pacer.first_token()
    for c in p.choices:
        for _ in c.pieces:
            await pacer.token()
    if fault is not None and fault.mode == "stall":
        seconds = fault.stall_seconds
        world.clock.advance(seconds)
        await asyncio.sleep(seconds)
    _bill(world, p)
    return json_response(_completion(p))


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add this module's routes."""
    world.extra["chat"] = {"faults": FaultPicker(world.config.fault, world.config.seed),
                           "cache": prompts.PrefixCache()}
    router.add_post("/v1/chat/completions", create)
