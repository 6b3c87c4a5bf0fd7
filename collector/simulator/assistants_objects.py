"""Wire objects of the simulated Assistants v2 API: pure builders, validation and pagination.

Shapes and key order follow the real recordings in ``shared/captures/AssistantsTests_*.json``;
nothing here does IO, so the run engine and the route handlers share one vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

RUN_TTL_SECONDS = 600
"""Runs expire ten minutes after creation (``expires_at = created_at + 600`` in every capture)."""

DEFAULT_RANKER = "default_2024_08_21"
INCLUDE_CONTENT = "step_details.tool_calls[*].file_search.results[*].content"
"""The one value ``include`` accepts (``RunStepInclude`` in the SDK)."""

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
ACTIVE = frozenset({"queued", "in_progress", "requires_action", "cancelling"})

_LIST_HIDDEN_MESSAGE_KEYS = ("status", "incomplete_details", "incomplete_at", "completed_at")
"""Keys a message carries in stream events but not in ``GET .../messages`` (FileSearchWorks capture)."""


class InvalidRequest(ValueError):
    """A request the API answers with 400; carries the ``param`` and ``code`` of the error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    """Run or step usage with the Assistants spelling ``prompt_token_details``."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_token_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def sum_usage(usages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's usage: the sum of its steps' usages."""
    return usage(
        sum(u["prompt_tokens"] for u in usages),
        sum(u["completion_tokens"] for u in usages),
        sum(u["prompt_token_details"]["cached_tokens"] for u in usages),
        sum(u["completion_tokens_details"]["reasoning_tokens"] for u in usages),
    )


def _int_in(value: Any, lo: int, hi: int, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"Invalid type for '{param}': expected an integer, but got {value!r} instead.",
            param,
            "invalid_type",
        )
    if value < lo:
        raise InvalidRequest(
            f"Invalid '{param}': integer below minimum value. Expected a value >= {lo}, "
            f"but got {value} instead.",
            param,
            "integer_below_min_value",
        )
    if value > hi:
        raise InvalidRequest(
            f"Invalid '{param}': integer above maximum value. Expected a value <= {hi}, "
            f"but got {value} instead.",
            param,
            "integer_above_max_value",
        )
    return value


def normalize_tools(tools: Any, param: str = "tools") -> list[dict[str, Any]]:
    """The tools as the API echoes them (file_search gets its ranking defaults filled in)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest(f"Invalid type for '{param}': expected an array.", param, "invalid_type")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        p = f"{param}[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "file_search":
            fs = tool.get("file_search") or {}
            echo: dict[str, Any] = {}
            if fs.get("max_num_results") is not None:
                echo["max_num_results"] = _int_in(
                    fs["max_num_results"], 1, 50, f"{p}.file_search.max_num_results"
                )
            ro = fs.get("ranking_options") or {}
            ranker = ro.get("ranker") or "auto"
            if ranker not in ("auto", DEFAULT_RANKER):
                raise InvalidRequest(
                    f"Invalid value for '{p}.file_search.ranking_options.ranker': {ranker!r}.",
                    f"{p}.file_search.ranking_options.ranker",
                    "invalid_value",
                )
            threshold = ro.get("score_threshold", 0.0)
            if not isinstance(threshold, int | float) or not 0.0 <= float(threshold) <= 1.0:
                raise InvalidRequest(
                    f"Invalid '{p}.file_search.ranking_options.score_threshold': expected a "
                    f"number between 0 and 1, but got {threshold!r} instead.",
                    f"{p}.file_search.ranking_options.score_threshold",
                    "invalid_value",
                )
            echo["ranking_options"] = {
                "ranker": DEFAULT_RANKER,
                "score_threshold": float(threshold),
                "hybrid_search": None,
            }
            out.append({"type": "file_search", "file_search": echo})
        elif kind == "function":
            fn = tool.get("function") or {}
            if not isinstance(fn, dict) or not fn.get("name"):
                raise InvalidRequest(
                    f"Missing required parameter: '{p}.function.name'.",
                    f"{p}.function.name",
                    "missing_required_parameter",
                )
            f_echo: dict[str, Any] = {"name": fn["name"]}
            if fn.get("description") is not None:
                f_echo["description"] = fn["description"]
            f_echo["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
            f_echo["strict"] = bool(fn.get("strict", False))
            out.append({"type": "function", "function": f_echo})
        elif kind == "code_interpreter":
            out.append({"type": "code_interpreter"})
        else:
            raise InvalidRequest(
                f"Invalid value: {kind!r}. Supported values are: 'code_interpreter', "
                f"'function', and 'file_search'.",
                f"{p}.type",
                "invalid_value",
            )
    return out


def check_include(values: Sequence[str]) -> bool:
    """Whether the include list asks for result content; any other value is a 400."""
    for i, v in enumerate(values):
        if v != INCLUDE_CONTENT:
            raise InvalidRequest(
                f"Invalid value: '{v}'. Supported values are: '{INCLUDE_CONTENT}'.",
                f"include[{i}]",
                "invalid_value",
            )
    return bool(values)


def vector_store_ids(tool_resources: Any) -> list[str]:
    """``tool_resources.file_search.vector_store_ids`` (empty when absent)."""
    if not isinstance(tool_resources, dict):
        return []
    fs = tool_resources.get("file_search") or {}
    ids = fs.get("vector_store_ids") or [] if isinstance(fs, dict) else []
    return [str(i) for i in ids]


def text_content(value: str) -> list[dict[str, Any]]:
    """One text content block without annotations."""
    return [{"type": "text", "text": {"value": value, "annotations": []}}]


def message_content(content: Any, param: str = "content") -> list[dict[str, Any]]:
    """A message's content blocks from the request's string or list of parts."""
    if isinstance(content, str):
        return text_content(content)
    if not isinstance(content, list) or not content:
        raise InvalidRequest(
            f"Invalid type for '{param}': expected a string or a non-empty array.", param, "invalid_type"
        )
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_file", "image_url"):
            raise InvalidRequest(
                f"Invalid value for '{param}[{i}].type'.", f"{param}[{i}].type", "invalid_value"
            )
        if part["type"] == "text":
            out.extend(text_content(str(part.get("text", ""))))
        else:
            out.append(copy.deepcopy(part))
    return out


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message's text blocks, joined."""
    return "\n".join(c["text"]["value"] for c in message.get("content", []) if c.get("type") == "text")


def message_obj(
    *,
    id_: str,
    thread_id: str,
    created_at: int,
    role: str,
    content: list[dict[str, Any]],
    assistant_id: str | None = None,
    run_id: str | None = None,
    status: str = "completed",
    attachments: list[Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``thread.message`` in the key order of the stream captures."""
    return {
        "id": id_,
        "object": "thread.message",
        "created_at": created_at,
        "assistant_id": assistant_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "status": status,
        "incomplete_details": None,
        "incomplete_at": None,
        "completed_at": created_at if status == "completed" else None,
        "role": role,
        "content": content,
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def message_for_list(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as ``GET .../messages`` shows it (without the status keys, as recorded)."""
    return {k: v for k, v in message.items() if k not in _LIST_HIDDEN_MESSAGE_KEYS}


def run_obj(
    *,
    id_: str,
    assistant: Mapping[str, Any],
    thread_id: str,
    created_at: int,
    body: Mapping[str, Any],
    tools: list[dict[str, Any]],
    streamed: bool,
) -> dict[str, Any]:
    """A queued ``thread.run``: the assistant's settings overridden by the request's."""
    instructions = (
        body.get("instructions") if body.get("instructions") is not None else assistant.get("instructions")
    )
    extra = body.get("additional_instructions")
    if extra:
        instructions = f"{instructions}\n{extra}" if instructions else extra
    trunc = body.get("truncation_strategy") or {"type": "auto", "last_messages": None}

    def pick(key: str, default: Any) -> Any:
        if body.get(key) is not None:
            return body[key]
        return assistant.get(key, default) if assistant.get(key) is not None else default

    return {
        "id": id_,
        "object": "thread.run",
        "created_at": created_at,
        "assistant_id": assistant["id"],
        "thread_id": thread_id,
        "status": "queued",
        "started_at": None,
        "expires_at": created_at + RUN_TTL_SECONDS,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "required_action": None,
        "last_error": None,
        "model": body.get("model") or assistant["model"],
        "instructions": instructions,
        "tools": tools,
        # the recordings show this echo on streamed runs and {} on the non-streamed one
        "tool_resources": {"code_interpreter": {"file_ids": []}} if streamed else {},
        "metadata": body.get("metadata") or {},
        "temperature": float(pick("temperature", 1.0)),
        "top_p": float(pick("top_p", 1.0)),
        "reasoning_effort": pick("reasoning_effort", None),
        "max_completion_tokens": body.get("max_completion_tokens"),
        "max_prompt_tokens": body.get("max_prompt_tokens"),
        "truncation_strategy": {
            "type": trunc.get("type", "auto"),
            "last_messages": trunc.get("last_messages"),
        },
        "incomplete_details": None,
        "usage": None,
        "response_format": pick("response_format", "auto"),
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
    }


def step_obj(*, id_: str, run: Mapping[str, Any], created_at: int, details: dict[str, Any]) -> dict[str, Any]:
    """An in-progress ``thread.run.step``."""
    return {
        "id": id_,
        "object": "thread.run.step",
        "created_at": created_at,
        "run_id": run["id"],
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "type": details["type"],
        "status": "in_progress",
        "cancelled_at": None,
        "completed_at": None,
        "expires_at": run["expires_at"],
        "failed_at": None,
        "last_error": None,
        "step_details": details,
        "usage": None,
    }


def step_for_wire(step: Mapping[str, Any], include_content: bool) -> dict[str, Any]:
    """A stored step as served: file_search results lose ``content`` unless it was asked for."""
    out = copy.deepcopy(dict(step))
    if not include_content and out["step_details"]["type"] == "tool_calls":
        for call in out["step_details"]["tool_calls"]:
            for result in (call.get("file_search") or {}).get("results") or []:
                result.pop("content", None)
    return out


def page(items: Sequence[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """A cursor page (``limit``, ``order``, ``after``, ``before``) over items in creation order."""
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidRequest(
            f"Invalid 'limit': expected an integer, but got {raw_limit!r} instead.", "limit", "invalid_type"
        ) from None
    _int_in(limit, 1, 100, "limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", "order", "invalid_value"
        )
    seq = list(items) if order == "asc" else list(reversed(items))
    ids = [it["id"] for it in seq]
    if query.get("after") in ids:
        seq = seq[ids.index(query["after"]) + 1 :]
    if query.get("before") in ids:
        seq = seq[: ids.index(query["before"])]
    data = seq[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(seq) > limit,
    }
