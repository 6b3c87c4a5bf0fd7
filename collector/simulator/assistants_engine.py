"""The Assistants run engine: one run's lifecycle as a sequence of SSE frames, with its billing.

A run is an async generator of :class:`Frame` s in the order the real API streams them (§2.3 of the
wire reference and the captures). The streaming route writes the frames as they come; a non-streamed
run keeps the generator and advances it one status at a time on each ``GET`` of the run, so
``create_and_poll`` sees ``queued``, ``in_progress``, then the terminal status. Every model step
writes one ledger entry; the run's usage is the sum of its steps' usages.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

from collector.simulator import economics, generate, prompts
from collector.simulator.assistants_objects import (
    message_obj,
    message_text,
    step_for_wire,
    step_obj,
    sum_usage,
    usage,
    vector_store_ids,
)
from collector.simulator.assistants_runstate import Drop, Frame, Item, Pacing, RunState, dump, module_state
from collector.simulator.core import count_tokens
from collector.simulator.faults import Fault
from collector.simulator.search import SearchError, default_max_num_results, search
from collector.simulator.state import UsageEntry, World

INTERRUPT_AFTER_DELTAS = 3
"""Mid-stream faults strike after this many message deltas (fewer when the answer is shorter)."""


_INTERRUPTS: dict[str, tuple[str, str, str]] = {
    # mode: (message incomplete reason, step event/status, run status)
    "failed": ("run_failed", "failed", "failed"),
    "cancelled": ("run_cancelled", "cancelled", "cancelled"),
    "expired": ("run_expired", "expired", "expired"),
    "incomplete": ("max_tokens", "completed", "incomplete"),
}

SERVER_ERROR_MESSAGE = "Sorry, something went wrong."


def _pieces(answer: generate.Answer, rng: random.Random) -> list[tuple[str, int | None]]:
    """The answer's stream pieces; each citation marker is one whole piece (as the API sends it)."""
    out: list[tuple[str, int | None]] = []
    pos = 0
    for i, c in enumerate(answer.citations):
        out.extend((p, None) for p in generate.split_pieces(answer.text[pos : c.start], rng))
        out.append((c.marker, i))
        pos = c.end
    out.extend((p, None) for p in generate.split_pieces(answer.text[pos:], rng))
    return out


def _function_arguments(tool: dict[str, Any]) -> str:
    """Deterministic arguments matching the function's declared properties."""
    props = (tool["function"].get("parameters") or {}).get("properties") or {}
    samples = {"string": "auto", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    args = {name: samples.get(str((spec or {}).get("type")), "auto") for name, spec in props.items()}
    return json.dumps(args, separators=(",", ":"))


class RunEngine:
    """Drives one run of one thread; construct per request (stream, poll or tool outputs)."""

    def __init__(
        self, world: World, run: dict[str, Any], state: RunState, *, pacing: Pacing, fault: Fault | None
    ) -> None:
        self.world = world
        self.run = run
        self.state = state
        self.pacing = pacing
        self.fault = fault
        self._rng = random.Random(f"assistants:{world.config.seed}:{run['id']}")

    # ---- helpers ---------------------------------------------------------------------------

    def _now(self) -> int:
        return self.world.clock.stamp()

    def _frame(self, event: str, obj: Any, first_text: bool = False) -> Frame:
        return Frame(event, dump(obj), first_text=first_text)

    def _run_event(self, status: str) -> Frame:
        self.run["status"] = status
        return self._frame(f"thread.run.{status}", self.run)

    def _tool_call_delta(self, step_id: str, fragment: dict[str, Any]) -> Frame:
        """A ``thread.run.step.delta`` carrying one fragment of the step's only tool call (index 0)."""
        delta = {"step_details": {"type": "tool_calls", "tool_calls": [{"index": 0, **fragment}]}}
        return self._frame("thread.run.step.delta",
                           {"id": step_id, "object": "thread.run.step.delta", "delta": delta})

    def _steps(self) -> dict[str, dict[str, Any]]:
        return self.world.run_steps.setdefault(self.run["id"], {})

    def _new_step(self, details: dict[str, Any]) -> dict[str, Any]:
        step = step_obj(
            id_=self.world.ids.new("step_"), run=self.run, created_at=self._now(), details=details
        )
        self._steps()[step["id"]] = step
        return step

    def _assistant(self) -> dict[str, Any]:
        return self.world.assistants.get(self.run["assistant_id"], {})

    def _base_segments(self) -> list[prompts.Segment]:
        segs: list[prompts.Segment] = []
        tools = prompts.tools_segment(self.run["tools"])
        if tools is not None:
            segs.append(tools)
        if self.run.get("instructions"):
            segs.append(prompts.message_segment("system", self.run["instructions"]))
        msgs = [
            m
            for m in self.world.messages.get(self.run["thread_id"], {}).values()
            if m.get("run_id") != self.run["id"] and m.get("status") == "completed"
        ]
        trunc = self.run.get("truncation_strategy") or {}
        if trunc.get("type") == "last_messages" and trunc.get("last_messages"):
            msgs = msgs[-int(trunc["last_messages"]) :]
        segs.extend(prompts.message_segment(m["role"], message_text(m)) for m in msgs)
        return segs

    def _bill(self, step: dict[str, Any], prompt: int, visible_output: int) -> dict[str, Any]:
        """The step's usage; writes the ledger entry for this model step."""
        last = module_state(self.world)["last_prompt"]
        cached = economics.cached_prefix(prompt, last.get(self.run["thread_id"]))
        last[self.run["thread_id"]] = prompt
        reasoning = economics.reasoning_tokens(self.run["model"], visible_output)
        u = usage(prompt, visible_output + reasoning, cached, reasoning)
        self.world.ledger.add_usage(
            UsageEntry(
                at=self.world.clock.now(),
                api="assistants",
                model=self.run["model"],
                object_id=self.run["id"],
                input_tokens=prompt,
                cached_input_tokens=cached,
                output_tokens=visible_output + reasoning,
                reasoning_tokens=reasoning,
            )
        )
        step["usage"] = u
        return u

    def _finish(self, status: str) -> Frame:
        """End the run: stamp it, sum its steps' usage, drop the expiries."""
        now = self._now()
        self.run["status"] = status
        self.run["expires_at"] = None
        self.run["required_action"] = None
        stamp_key = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}.get(
            status
        )
        if stamp_key:
            self.run[stamp_key] = now
        if status == "failed" and self.run["last_error"] is None:
            self.run["last_error"] = {"code": "server_error", "message": SERVER_ERROR_MESSAGE}
        if status == "incomplete" and self.run["incomplete_details"] is None:
            self.run["incomplete_details"] = {"reason": "max_completion_tokens"}
        self.run["usage"] = sum_usage([s["usage"] for s in self._steps().values() if s["usage"]])
        for s in self._steps().values():
            s["expires_at"] = None
        return self._frame(f"thread.run.{status}", self.run)

    def _tools_of(self, kind: str) -> list[dict[str, Any]]:
        choice = self.run.get("tool_choice")
        if choice == "none":
            return []
        tools = [t for t in self.run["tools"] if t["type"] == kind]
        if isinstance(choice, dict) and choice.get("type") == "function" and kind == "function":
            name = (choice.get("function") or {}).get("name")
            tools = [t for t in tools if t["function"]["name"] == name] or tools
        return tools

    def _store_ids(self) -> list[str]:
        thread = self.world.threads.get(self.run["thread_id"], {})
        ids = vector_store_ids(thread.get("tool_resources")) + vector_store_ids(
            self._assistant().get("tool_resources")
        )
        return list(dict.fromkeys(ids))

    def _query(self) -> str:
        users = [
            m for m in self.world.messages.get(self.run["thread_id"], {}).values() if m["role"] == "user"
        ]
        return message_text(users[-1]) if users else ""

    # ---- the lifecycle ---------------------------------------------------------------------

    async def start(self, prelude: list[Frame] | None = None) -> AsyncIterator[Item]:
        """The run from ``thread.run.created`` to its end (or ``requires_action``)."""
        for f in prelude or []:
            yield f
        yield self._frame("thread.run.created", self.run)
        yield self._frame("thread.run.queued", self.run)
        async for item in self._work():
            yield item

    async def resume(self, outputs: dict[str, str]) -> AsyncIterator[Item]:
        """After ``submit_tool_outputs``: close the function step, then continue the run."""
        step = self._steps()[self.state.function_step_id or ""]
        for call in step["step_details"]["tool_calls"]:
            call["function"]["output"] = outputs.get(call["id"], "")
            self.state.context.append(prompts.text_segment("tool_output", call["function"]["output"]))
        step.update(status="completed", completed_at=self._now(), usage=self.state.function_usage)
        self.run["required_action"] = None
        yield self._frame("thread.run.step.completed", step)
        self.state.function_step_id = None
        yield self._run_event("queued")
        async for item in self._work():
            yield item

    async def cancel_now(self) -> AsyncIterator[Item]:
        """A run cancelled while nothing runs (queued or waiting for tool outputs)."""
        if self.state.function_step_id:
            step = self._steps()[self.state.function_step_id]
            step.update(status="cancelled", cancelled_at=self._now(), usage=self.state.function_usage)
        yield self._finish("cancelled")

    async def _work(self) -> AsyncIterator[Item]:
        await self.pacing.queue()
        if self.state.cancel_requested:
            yield self._finish("cancelled")
            return
        self.run["started_at"] = self._now()
        yield self._run_event("in_progress")
        functions = self._tools_of("function")
        forced = self.fault is not None and self.fault.mode == "requires_action"
        if not self.state.function_called and (functions or forced):
            async for item in self._function_step(functions):
                yield item
            return
        stores = self._store_ids()
        if self._tools_of("file_search") and stores and not self.state.hits:
            try:
                async for item in self._file_search_step(stores):
                    yield item
            except SearchError as exc:
                self.world.log.warning("file_search failed in run %s: %s", self.run["id"], exc)
                yield self._finish("failed")
                return
            if self.state.cancel_requested:
                yield self._frame("thread.run.cancelling", {**self.run, "status": "cancelling"})
                yield self._finish("cancelled")
                return
        async for item in self._message_step():
            yield item

    async def _function_step(self, functions: list[dict[str, Any]]) -> AsyncIterator[Item]:
        tool: dict[str, Any] = functions[0] if functions else {"function": {"name": "lookup_context"}}
        name = tool["function"]["name"]
        args = _function_arguments(tool) if functions else "{}"
        call_id = self.world.ids.new("call_")
        step = self._new_step({"type": "tool_calls", "tool_calls": []})
        yield self._frame("thread.run.step.created", step)
        yield self._frame("thread.run.step.in_progress", step)
        prompt = prompts.prompt_tokens(self._base_segments() + self.state.context)
        await self.pacing.first_token()
        yield self._tool_call_delta(step["id"], {
            "id": call_id, "type": "function", "function": {"name": name, "arguments": "", "output": None}})
        await self.pacing.token()
        yield self._tool_call_delta(step["id"], {"type": "function", "function": {"arguments": args}})
        step["step_details"]["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args, "output": None}}
        ]
        call_text = dump({"name": name, "arguments": args})
        # the step is billed now (the model ran); its usage shows when outputs close the step
        self.state.function_usage = self._bill(step, prompt, count_tokens(call_text))
        step["usage"] = None
        self.state.context.append(prompts.text_segment("function_call", call_text))
        self.state.function_called = True
        self.state.function_step_id = step["id"]
        self.run["required_action"] = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {
                "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
                ]
            },
        }
        yield self._run_event("requires_action")

    async def _file_search_step(self, stores: list[str]) -> AsyncIterator[Item]:
        tool = self._tools_of("file_search")[0]["file_search"]
        ranking = tool["ranking_options"]
        n = tool.get("max_num_results") or default_max_num_results(self.run["model"])
        query = self._query()
        call_id = self.world.ids.new("call_")
        step = self._new_step({"type": "tool_calls", "tool_calls": []})
        yield self._frame("thread.run.step.created", step)
        yield self._frame("thread.run.step.in_progress", step)
        prompt = prompts.prompt_tokens(self._base_segments() + self.state.context)
        await self.pacing.first_token()
        echo = {"ranker": ranking["ranker"], "score_threshold": ranking["score_threshold"]}
        yield self._tool_call_delta(step["id"], {
            "id": call_id, "type": "file_search", "file_search": {"ranking_options": echo, "results": []}})
        hits = search(
            self.world, stores, query, max_num_results=n, score_threshold=ranking["score_threshold"]
        )
        self.state.hits = hits
        results = [
            {
                "file_id": h.file_id,
                "file_name": h.filename,
                "score": h.score,
                "attributes": dict(h.attributes),
                "content": [{"type": "text", "text": h.text}],
            }
            for h in hits
        ]
        step["step_details"]["tool_calls"] = [
            {
                "id": call_id,
                "type": "file_search",
                "file_search": {"ranking_options": echo, "results": results},
            }
        ]
        self._bill(step, prompt, count_tokens(dump({"queries": [query]})))
        self.state.context.append(prompts.search_segment(call_id, [h.tokens for h in hits]))
        step["status"] = "completed"
        step["completed_at"] = self._now()
        yield self._frame("thread.run.step.completed", step_for_wire(step, self.state.include_content))

    def _interrupt_mode(self) -> str | None:
        mode = self.fault.mode if self.fault else None
        return mode if mode in (*_INTERRUPTS, "error_event", "error_event_flat", "drop", "stall") else None

    async def _message_step(self) -> AsyncIterator[Item]:
        thread_id = self.run["thread_id"]
        msg = message_obj(
            id_=self.world.ids.new("msg_"),
            thread_id=thread_id,
            created_at=self._now(),
            role="assistant",
            content=[],
            assistant_id=self.run["assistant_id"],
            run_id=self.run["id"],
            status="in_progress",
        )
        step = self._new_step({"type": "message_creation", "message_creation": {"message_id": msg["id"]}})
        yield self._frame("thread.run.step.created", step)
        yield self._frame("thread.run.step.in_progress", step)
        self.world.messages.setdefault(thread_id, {})[msg["id"]] = msg
        yield self._frame("thread.message.created", msg)
        yield self._frame("thread.message.in_progress", msg)
        prompt = prompts.prompt_tokens(self._base_segments() + self.state.context)
        sources = [generate.Source(h.file_id, h.filename, h.text) for h in self.state.hits]
        n_msgs = len(self.world.messages.get(thread_id, {}))
        answer = generate.compose(self._rng, sources, style="assistants", message_index=n_msgs + 2)
        pieces = _pieces(answer, self._rng)
        mode = self._interrupt_mode()
        strike = min(INTERRUPT_AFTER_DELTAS, max(1, len(pieces) - 1))
        cap = self.run.get("max_completion_tokens")
        if mode == "incomplete":
            cap = max(1, count_tokens(answer.text) // 2)
        served = ""
        annotations: list[dict[str, Any]] = []
        ended: str | None = None
        await self.pacing.first_token()
        for i, (piece, cite) in enumerate(pieces):
            if i:
                await self.pacing.token()
            if cap is not None and count_tokens(served + piece) > cap:
                ended = "incomplete"
                break
            text: dict[str, Any] = {"value": piece}
            if i == 0:
                text["annotations"] = []
            if cite is not None:
                c = answer.citations[cite]
                start = len(served)
                ann = {
                    "type": "file_citation",
                    "text": c.marker,
                    "start_index": start,
                    "end_index": start + len(c.marker),
                    "file_citation": {"file_id": c.file_id},
                }
                annotations.append(ann)
                text["annotations"] = [
                    {
                        "index": len(annotations) - 1,
                        **ann,
                        "file_citation": {"file_id": c.file_id, "quote": ""},
                    }
                ]
            served += piece
            first = bool(piece) and not self.state.first_text_sent
            self.state.first_text_sent = self.state.first_text_sent or first
            yield self._frame(
                "thread.message.delta",
                {
                    "id": msg["id"],
                    "object": "thread.message.delta",
                    "delta": {"content": [{"index": 0, "type": "text", "text": text}]},
                },
                first_text=first,
            )
            if i + 1 == strike and mode in ("error_event", "error_event_flat"):
                msg["content"] = [{"type": "text", "text": {"value": served, "annotations": annotations}}]
                async for item in self._error_event(
                    step, msg, served, prompt, flat=mode == "error_event_flat"
                ):
                    yield item
                return
            if i + 1 == strike and mode == "drop":
                yield Drop()
            if i + 1 == strike and mode == "stall" and self.fault is not None:
                await self.pacing.pause(self.fault.stall_seconds)
            if i + 1 == strike and mode in ("failed", "cancelled", "expired"):
                ended = mode
                break
            if self.state.cancel_requested:
                ended = "cancelled"
                break
        msg["content"] = [{"type": "text", "text": {"value": served, "annotations": annotations}}]
        self._bill(step, prompt, count_tokens(served))
        if ended is None:
            msg.update(status="completed", completed_at=self._now())
            yield self._frame("thread.message.completed", msg)
            step.update(status="completed", completed_at=self._now())
            yield self._frame("thread.run.step.completed", step)
            yield self._finish("completed")
            return
        reason, step_status, run_status = _INTERRUPTS[ended]
        if run_status == "cancelled":
            yield self._frame("thread.run.cancelling", {**self.run, "status": "cancelling"})
        msg.update(status="incomplete", incomplete_at=self._now(), incomplete_details={"reason": reason})
        yield self._frame("thread.message.incomplete", msg)
        stamp = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}.get(
            step_status
        )
        step["status"] = step_status
        if stamp:
            step[stamp] = self._now()
        if step_status == "failed":
            step["last_error"] = {"code": "server_error", "message": SERVER_ERROR_MESSAGE}
        yield self._frame(f"thread.run.step.{step_status}", step)
        yield self._finish(run_status)

    async def _error_event(
        self, step: dict[str, Any], msg: dict[str, Any], served: str, prompt: int, *, flat: bool
    ) -> AsyncIterator[Item]:
        """A mid-stream ``error`` event; the run fails on the server with what it billed so far."""
        self._bill(step, prompt, count_tokens(served))
        msg.update(
            status="incomplete", incomplete_at=self._now(), incomplete_details={"reason": "run_failed"}
        )
        step.update(
            status="failed",
            failed_at=self._now(),
            last_error={"code": "server_error", "message": SERVER_ERROR_MESSAGE},
        )
        self._finish("failed")
        err = {
            "code": "server_error",
            "message": "The server had an error while processing your request. Sorry about that!",
            "param": None,
            "type": "server_error",
        }
        yield Frame("error", dump(err if flat else {"error": err}), final=False)
