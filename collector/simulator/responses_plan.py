"""Planning a Responses reply: everything it will contain (search, answer, function call, usage),
decided from seeded generators before the first event is written.

The only IO is the search, which reads the world. Billing follows ``economics``: the step that
decides to search pays the base prompt, each of ``RESPONSES_STEPS_AFTER_SEARCH`` later steps pays the
base prompt plus the search payload of the chunks actually retrieved, all summed in one usage block.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.simulator import economics, generate, prompts
from collector.simulator.faults import Fault
from collector.simulator.responses_request import Request, input_segment
from collector.simulator.search import Hit, search
from collector.simulator.state import World


@dataclass
class MessagePlan:
    """The answer message: its pieces, where annotations go, and its status."""

    item_id: str
    pieces: list[str]
    annotations: list[tuple[int, dict[str, Any]]]
    """(index of the piece after which the annotation event comes, annotation)."""
    status: str

    @property
    def text(self) -> str:
        """The served text."""
        return "".join(self.pieces)

    def item(self, status: str | None = None) -> dict[str, Any]:
        """The finished message item."""
        return {"id": self.item_id, "type": "message", "status": status or self.status,
                "content": [self.part()], "role": "assistant"}

    def part(self) -> dict[str, Any]:
        """The finished output_text part."""
        return {"type": "output_text", "annotations": [a for _, a in self.annotations], "logprobs": [],
                "text": self.text}


@dataclass
class FunctionPlan:
    """A function call the model makes instead of answering."""

    item_id: str
    call_id: str
    name: str
    pieces: list[str]

    @property
    def arguments(self) -> str:
        """The served arguments."""
        return "".join(self.pieces)

    def item(self, status: str = "completed") -> dict[str, Any]:
        """The function_call item."""
        return {"id": self.item_id, "type": "function_call", "status": status,
                "arguments": self.arguments if status == "completed" else "", "call_id": self.call_id,
                "name": self.name}


@dataclass
class Plan:
    """A response decided in advance; :func:`_execute` plays it as events."""

    req: Request
    response: dict[str, Any]
    """The response object as ``response.created`` shows it."""
    rng_obf: random.Random
    reasoning_id: str | None
    fs_id: str | None
    queries: list[str]
    hits: list[Hit]
    message: MessagePlan | None
    function: FunctionPlan | None
    usage: dict[str, Any]
    reasoning_tokens: int
    incomplete: bool
    history: list[prompts.Segment]
    """The prompt segments of the history this response adds to (without tools and instructions)."""

    def fs_item(self, status: str, final: bool, *, with_results: bool | None = None) -> dict[str, Any]:
        """The file_search_call item, in progress or finished (results as the request's include says,
        unless ``with_results`` decides)."""
        results: list[dict[str, Any]] | None = None
        if with_results is None:
            with_results = "file_search_call.results" in self.req.include
        if final and with_results:
            results = [{"attributes": dict(h.attributes), "file_id": h.file_id, "filename": h.filename,
                        "score": round(h.score, 4), "text": h.text, "vector_store_id": h.vector_store_id}
                       for h in self.hits]
        assert self.fs_id is not None
        return {"id": self.fs_id, "type": "file_search_call", "status": status,
                "queries": list(self.queries) if final else [], "results": results}

    def reasoning_item(self) -> dict[str, Any]:
        """The reasoning item reasoning models emit first."""
        assert self.reasoning_id is not None
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            return prompts.content_text(item.get("content")).strip()
    return ""


def _queries(rng: random.Random, text: str) -> list[str]:
    """1–3 search queries rephrasing the user's question, as the model writes them."""
    base = " ".join(text.split())[:300] or "relevant information"
    words = [w.strip("?.,!;:'\"") for w in base.split()]
    content = [w for w in words if len(w) > 3]
    out = [base.rstrip("?") + ("?" if base.endswith("?") else "")]
    if content and rng.random() < 0.5:
        out.append(" ".join(content[:8]))
        if len(content) > 2 and rng.random() < 0.5:
            out.append(" ".join(content[-3:]) + " details")
    return list(dict.fromkeys(out))


def _run_search(world: World, tool: Mapping[str, Any], queries: list[str]) -> list[Hit]:
    best: dict[tuple[str, str, int], Hit] = {}
    for q in queries:
        for h in search(world, list(tool["vector_store_ids"]), q, max_num_results=tool["max_num_results"],
                        score_threshold=tool["ranking_options"]["score_threshold"], filters=tool["filters"]):
            key = (h.vector_store_id, h.file_id, h.chunk_index)
            if key not in best or best[key].score < h.score:
                best[key] = h
    ranked = sorted(best.values(), key=lambda h: (-h.score, h.file_id, h.chunk_index))
    return ranked[: tool["max_num_results"]]


def _plan_message(rng: random.Random, hits: list[Hit]) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    sources = [generate.Source(h.file_id, h.filename, h.text) for h in hits]
    answer = generate.compose(rng, sources, style="responses")
    text = answer.text
    # The recordings put the annotation index before the sentence's full stop, and the annotation event
    # between the delta that reaches that index and the delta carrying the full stop.
    cuts: list[tuple[int, dict[str, Any]]] = []
    for c in answer.citations:
        index = c.start - 1 if c.start > 0 and text[c.start - 1] == "." else c.start
        cuts.append((index, {"type": "file_citation", "file_id": c.file_id, "filename": c.filename,
                             "index": index}))
    pieces: list[str] = []
    annotations: list[tuple[int, dict[str, Any]]] = []
    pos = 0
    for index, ann in cuts:
        if index > pos:
            pieces.extend(generate.split_pieces(text[pos:index], rng))
            pos = index
        annotations.append((len(pieces) - 1, ann))
    pieces.extend(generate.split_pieces(text[pos:], rng))
    return pieces, annotations


def _fill(rng: random.Random, schema: Any, root: Mapping[str, Any], text: str, depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > 8:
        return text
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        return _fill(rng, target, root, text, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")]
            return _fill(rng, (non_null or options)[0], root, text, depth + 1)
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _fill(rng, sub, root, text, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [_fill(rng, schema.get("items"), root, text, depth + 1)]
    if kind == "integer":
        return rng.randint(1, 10)
    if kind == "number":
        return float(rng.randint(1, 100)) / 4
    if kind == "boolean":
        return True
    return text


def fill_schema(rng: random.Random, schema: Mapping[str, Any] | None, text: str) -> str:
    """Compact JSON that satisfies ``schema`` (function arguments, structured outputs), with every
    property present and string values taken from ``text``."""
    value = _fill(rng, schema or {"type": "object", "properties": {}}, schema or {}, text, 0)
    return json.dumps(value, separators=(",", ":"))


def _truncate(pieces: list[str], budget: int) -> list[str]:
    kept: list[str] = []
    for p in pieces:
        if prompts.count_tokens("".join([*kept, p])) > budget:
            break
        kept.append(p)
    return kept


def _base_response(world: World, req: Request, resp_id: str, status: str) -> dict[str, Any]:
    b = req.body
    reasoning = b.get("reasoning") or {}
    is_reasoning = economics.is_reasoning_model(req.model)
    text_cfg = {"format": {"type": "text"}, "verbosity": "medium"}
    if isinstance(b.get("text"), Mapping):
        text_cfg = {**text_cfg, **b["text"]}
    resp: dict[str, Any] = {
        "id": resp_id,
        "object": "response",
        "created_at": world.clock.stamp(),
        "status": status,
        "background": req.background,
        "completed_at": None,
        "error": None,
        "frequency_penalty": 0.0,
        "incomplete_details": None,
        "instructions": b.get("instructions"),
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": b.get("max_tool_calls"),
        "model": prompts.snapshot(req.model),
        "output": [],
        "parallel_tool_calls": b.get("parallel_tool_calls", True) is not False,
        "presence_penalty": 0.0,
        "previous_response_id": req.previous_response_id,
        "prompt_cache_key": b.get("prompt_cache_key"),
        "prompt_cache_retention": b.get("prompt_cache_retention"),
        "reasoning": {"effort": reasoning.get("effort") or ("medium" if is_reasoning else None),
                      "summary": reasoning.get("summary")},
        "safety_identifier": b.get("safety_identifier"),
        "service_tier": b.get("service_tier") or "auto",
        "store": req.store,
        "temperature": float(b["temperature"]) if b.get("temperature") is not None else 1.0,
        "text": text_cfg,
        "tool_choice": b.get("tool_choice") or "auto",
        "tools": req.tools,
        "top_logprobs": b.get("top_logprobs") or 0,
        "top_p": float(b["top_p"]) if b.get("top_p") is not None else 1.0,
        "truncation": b.get("truncation") or "disabled",
        "usage": None,
        "user": b.get("user"),
        "metadata": b.get("metadata") or {},
    }
    if req.conversation_id is not None:
        resp["conversation"] = {"id": req.conversation_id}
    return resp


def plan(world: World, req: Request, fault: Fault | None, *, history: list[prompts.Segment],
         cache: prompts.PrefixCache) -> Plan:
    """Decide the whole response. ``history`` holds the prompt segments of the earlier turns (previous
    response or conversation). Raises :class:`~collector.simulator.search.SearchError` (unknown vector
    store, bad filter)."""
    resp_id = world.ids.new("resp_", 48)
    seed = world.config.seed
    rng = random.Random(f"responses:{seed}:{resp_id}")
    history = list(history)
    history += [input_segment(i) for i in req.input_items]
    head: list[prompts.Segment] = []
    tools_seg = prompts.tools_segment(req.tools)
    if tools_seg is not None:
        head.append(tools_seg)
    instructions = req.body.get("instructions")
    if isinstance(instructions, str) and instructions:
        head.append(prompts.message_segment("developer", instructions))
    base = head + history

    user_text = _last_user_text(req.input_items)
    last_is_output = bool(req.input_items) and req.input_items[-1].get("type") == "function_call_output"
    tool_choice = req.body.get("tool_choice") or "auto"
    forced_fn = tool_choice.get("name") if isinstance(tool_choice, Mapping) else None
    function: FunctionPlan | None = None
    fs_id: str | None = None
    queries: list[str] = []
    hits: list[Hit] = []
    reasoning_id = world.ids.new("rs_", 48) if economics.is_reasoning_model(req.model) else None
    if req.functions and tool_choice != "none" and not last_is_output:
        tool = next((t for t in req.functions if t["name"] == forced_fn), req.functions[0])
        args = fill_schema(rng, tool.get("parameters"), " ".join(user_text.split()[:8]) or tool["name"])
        function = FunctionPlan(world.ids.new("fc_", 48), world.ids.new("call_", 24), tool["name"],
                                generate.split_pieces(args, rng))
    elif req.file_search is not None and tool_choice != "none" and not last_is_output:
        fs_id = world.ids.new("fs_", 48)
        queries = _queries(rng, user_text)
        hits = _run_search(world, req.file_search, queries)

    message: MessagePlan | None = None
    annotations: list[tuple[int, dict[str, Any]]] = []
    if function is None:
        msg_id = world.ids.new("msg_", 48)
        text_cfg = req.body.get("text")
        text_format = text_cfg.get("format") if isinstance(text_cfg, Mapping) else None
        if isinstance(text_format, Mapping) and text_format.get("type") == "json_schema":
            pieces = generate.split_pieces(fill_schema(rng, text_format.get("schema"), user_text[:80]), rng)
        else:
            pieces, annotations = _plan_message(rng, hits)
        message = MessagePlan(msg_id, pieces, annotations, "completed")
    visible = prompts.count_tokens(message.text if message else function.arguments if function else "")
    reasoning = economics.reasoning_tokens(req.model, visible)
    budget = req.max_output_tokens
    if fault is not None and fault.mode == "incomplete":
        budget = max(1, (visible + reasoning) // 2)
    incomplete = budget is not None and visible + reasoning > budget
    if incomplete:
        assert budget is not None
        reasoning = min(reasoning, budget)
        if message is not None:
            message.pieces = _truncate(message.pieces, budget - reasoning)
            served = len(message.text)
            message.annotations = [(k, a) for k, a in message.annotations if k < len(message.pieces)
                                   and a["index"] <= served]
            message.status = "incomplete"
            if not message.pieces:
                message = None
        if function is not None:
            function.pieces = _truncate(function.pieces, budget - reasoning)
    output_tokens = reasoning + prompts.count_tokens(
        message.text if message else function.arguments if function else "")

    steps = [base]
    if fs_id is not None:
        search_seg = prompts.search_segment(fs_id, [h.tokens for h in hits])
        steps += [[*base, search_seg]] * economics.RESPONSES_STEPS_AFTER_SEARCH
        history.append(search_seg)
    input_tokens = sum(prompts.prompt_tokens(s) for s in steps)
    cached = sum(cache.cached(s) for s in steps)
    if message is not None:
        history.append(prompts.message_segment("assistant", message.text))
    if function is not None:
        history.append(prompts.text_segment("function_call", f"{function.name}{function.arguments}"))
    usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
             "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning},
             "total_tokens": input_tokens + output_tokens}
    status = "queued" if req.background else "in_progress"
    return Plan(req=req, response=_base_response(world, req, resp_id, status),
                rng_obf=random.Random(f"obfuscation:{seed}:{resp_id}"), reasoning_id=reasoning_id,
                fs_id=fs_id, queries=queries, hits=hits, message=message, function=function, usage=usage,
                reasoning_tokens=reasoning, incomplete=incomplete, history=history)
