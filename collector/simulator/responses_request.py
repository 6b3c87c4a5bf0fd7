"""Parsing and validating a ``POST /v1/responses`` body the way the API does (pure, no IO).

Tools are echoed with the API's defaults (file_search: ``max_num_results`` 20, ranking options
``{ranker: "auto", score_threshold: 0.0}``, ``filters: null``); bad values raise :class:`Invalid`
carrying the API's 400 fields (``message``, ``param``, ``code``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from collector.simulator import prompts
from collector.simulator.core import api_error

INCLUDABLE = frozenset({
    "file_search_call.results",
    "message.output_text.logprobs",
    "reasoning.encrypted_content",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "web_search_call.action.sources",
    "web_search_call.results",
})

KNOWN_PARAMS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "include", "stream", "stream_options",
    "background", "background_options", "store", "previous_response_id", "conversation", "metadata",
    "user", "safety_identifier", "service_tier", "truncation", "max_output_tokens", "max_tool_calls",
    "temperature", "top_p", "top_logprobs", "parallel_tool_calls", "reasoning", "text", "prompt",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "context_management",
    "access_programs", "image", "moderation",
})


class Invalid(Exception):
    """A request the API refuses, with the API's error fields."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def response(self) -> web.Response:
        """The API's error reply."""
        return api_error(self.status, self.message, param=self.param, code=self.code)


def _int_in(body: Mapping[str, Any], key: str, param: str, lo: int, hi: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"Invalid type for '{param}': expected an integer, but got "
                      f"{type(value).__name__} instead.", param, "invalid_type")
    if value < lo:
        raise Invalid(f"Invalid '{param}': integer below minimum value. Expected a value >= {lo}, but got "
                      f"{value} instead.", param, "integer_below_min_value")
    if hi is not None and value > hi:
        raise Invalid(f"Invalid '{param}': integer above maximum value. Expected a value <= {hi}, but got "
                      f"{value} instead.", param, "integer_above_max_value")
    return value


def _number_in(value: Any, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"Invalid type for '{param}': expected a number, but got {type(value).__name__} "
                      "instead.", param, "invalid_type")
    if value < lo:
        raise Invalid(f"Invalid '{param}': decimal below minimum value. Expected a value >= {lo}, but got "
                      f"{value} instead.", param, "decimal_below_min_value")
    if value > hi:
        raise Invalid(f"Invalid '{param}': decimal above maximum value. Expected a value <= {hi}, but got "
                      f"{value} instead.", param, "decimal_above_max_value")
    return float(value)


def _file_search_echo(tool: Mapping[str, Any], i: int) -> dict[str, Any]:
    ids = tool.get("vector_store_ids")
    if ids is None:
        raise Invalid(f"Missing required parameter: 'tools[{i}].vector_store_ids'.",
                      f"tools[{i}].vector_store_ids", "missing_required_parameter")
    if not isinstance(ids, list) or not all(isinstance(v, str) for v in ids):
        raise Invalid(f"Invalid type for 'tools[{i}].vector_store_ids': expected an array of strings.",
                      f"tools[{i}].vector_store_ids", "invalid_type")
    if len(ids) > 2:
        raise Invalid(f"Invalid 'tools[{i}].vector_store_ids': array too long. Expected an array with "
                      f"maximum length 2, but got an array with length {len(ids)} instead.",
                      f"tools[{i}].vector_store_ids", "array_above_max_length")
    max_num = _int_in(tool, "max_num_results", f"tools[{i}].max_num_results", 1, 50)
    ranking_in = tool.get("ranking_options") or {}
    if not isinstance(ranking_in, Mapping):
        raise Invalid(f"Invalid type for 'tools[{i}].ranking_options': expected an object.",
                      f"tools[{i}].ranking_options", "invalid_type")
    ranker = ranking_in.get("ranker") or "auto"
    if ranker not in ("auto", "default-2024-11-15"):
        raise Invalid(f"Invalid value: '{ranker}'. Supported values are: 'auto' and 'default-2024-11-15'.",
                      f"tools[{i}].ranking_options.ranker", "invalid_value")
    threshold = ranking_in.get("score_threshold")
    threshold = 0.0 if threshold is None else _number_in(
        threshold, f"tools[{i}].ranking_options.score_threshold", 0.0, 1.0)
    ranking: dict[str, Any] = {"ranker": ranker, "score_threshold": threshold}
    if ranking_in.get("hybrid_search") is not None:
        ranking["hybrid_search"] = ranking_in["hybrid_search"]
    filters = tool.get("filters")
    if filters is not None and not isinstance(filters, Mapping):
        raise Invalid(f"Invalid type for 'tools[{i}].filters': expected an object.", f"tools[{i}].filters",
                      "invalid_type")
    return {"type": "file_search", "filters": filters, "max_num_results": 20 if max_num is None else max_num,
            "ranking_options": ranking, "vector_store_ids": list(ids)}


def _function_echo(tool: Mapping[str, Any], i: int) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name",
                      "missing_required_parameter")
    return {"type": "function", "description": tool.get("description"), "name": name,
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}


def normalize_input(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    if not isinstance(raw, list):
        raise Invalid("Invalid type for 'input': expected one of a string or an array of input items.",
                      "input", "invalid_type")
    items: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise Invalid(f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]",
                          "invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise Invalid(f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', "
                              "'developer', and 'user'.", f"input[{i}].role", "invalid_value")
            content = item.get("content")
            part = "output_text" if role == "assistant" else "input_text"
            if isinstance(content, str):
                content = [{"type": part, "text": content}]
            elif not isinstance(content, list):
                raise Invalid(f"Missing required parameter: 'input[{i}].content'.", f"input[{i}].content",
                              "missing_required_parameter")
            items.append({"type": "message", "role": role, "content": content})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise Invalid(f"Missing required parameter: 'input[{i}].call_id'.", f"input[{i}].call_id",
                              "missing_required_parameter")
            items.append(dict(item))
        else:
            items.append(dict(item))
    return items


def input_segment(item: Mapping[str, Any]) -> prompts.Segment:
    kind = item.get("type")
    if kind == "message":
        return prompts.message_segment(str(item.get("role")), prompts.content_text(item.get("content")))
    if kind == "function_call_output":
        output = item.get("output")
        return prompts.text_segment("function_call_output",
                                    output if isinstance(output, str) else json.dumps(output))
    if kind == "function_call":
        return prompts.text_segment("function_call", f"{item.get('name')}{item.get('arguments')}")
    return prompts.text_segment(str(kind), json.dumps(item, sort_keys=True))


@dataclass
class Request:
    """A validated ``POST /v1/responses`` body."""

    body: dict[str, Any]
    model: str
    input_items: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    include: list[str]
    stream: bool
    background: bool
    store: bool
    obfuscate: bool
    max_output_tokens: int | None
    previous_response_id: str | None
    conversation_id: str | None

    @property
    def file_search(self) -> dict[str, Any] | None:
        """The file_search tool, if any."""
        return next((t for t in self.tools if t["type"] == "file_search"), None)

    @property
    def functions(self) -> list[dict[str, Any]]:
        """The function tools."""
        return [t for t in self.tools if t["type"] == "function"]


def parse_request(body: dict[str, Any]) -> Request:
    """Validate a create body the way the API does; raises :class:`Invalid`."""
    unknown = sorted(k for k in body if k not in KNOWN_PARAMS)
    if unknown:
        raise Invalid(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    model = body.get("model")
    if model is None:
        raise Invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise Invalid("Invalid type for 'model': expected a string.", "model", "invalid_type")
    items = normalize_input(body.get("input"))
    if not items and body.get("prompt") is None and body.get("previous_response_id") is None \
            and body.get("conversation") is None:
        raise Invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw_tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind == "file_search":
            if any(t["type"] == "file_search" for t in tools):
                raise Invalid("Only one file_search tool is allowed.", f"tools[{i}]", "invalid_value")
            tools.append(_file_search_echo(tool, i))
        elif kind == "function":
            tools.append(_function_echo(tool, i))
        else:
            raise Invalid(f"Invalid value: '{kind}'. Supported values are: 'file_search' and 'function'.",
                          f"tools[{i}].type", "invalid_value")
    include = body.get("include") or []
    if not isinstance(include, list):
        raise Invalid("Invalid type for 'include': expected an array.", "include", "invalid_type")
    for i, value in enumerate(include):
        if value not in INCLUDABLE:
            raise Invalid(f"Invalid value: '{value}'. Supported values are: "
                          + ", ".join(f"'{v}'" for v in sorted(INCLUDABLE)) + ".", f"include[{i}]",
                          "invalid_value")
    max_out = _int_in(body, "max_output_tokens", "max_output_tokens", 16, None)
    store = body.get("store")
    store = True if store is None else bool(store)
    background = bool(body.get("background"))
    if background and not store:
        raise Invalid("Background mode requires store=true.", "background", "invalid_value")
    prev = body.get("previous_response_id")
    conv = body.get("conversation")
    if prev is not None and conv is not None:
        raise Invalid("Mutually exclusive parameters: Ensure you are only providing one of: "
                      "'previous_response_id' or 'conversation'.", None, "mutually_exclusive_parameters")
    conv_id = conv.get("id") if isinstance(conv, Mapping) else conv
    if conv_id is not None and not isinstance(conv_id, str):
        raise Invalid("Invalid type for 'conversation': expected a string or an object with an id.",
                      "conversation", "invalid_type")
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        if body.get(key) is not None:
            _number_in(body[key], key, lo, hi)
    _int_in(body, "top_logprobs", "top_logprobs", 0, 20)
    _int_in(body, "max_tool_calls", "max_tool_calls", 1, None)
    for key in ("reasoning", "text", "metadata", "stream_options"):
        if body.get(key) is not None and not isinstance(body[key], Mapping):
            raise Invalid(f"Invalid type for '{key}': expected an object, but got {type(body[key]).__name__} "
                          "instead.", key, "invalid_type")
    truncation = body.get("truncation")
    if truncation not in (None, "auto", "disabled"):
        raise Invalid(f"Invalid value: '{truncation}'. Supported values are: 'auto' and 'disabled'.",
                      "truncation", "invalid_value")
    stream_options = body.get("stream_options") or {}
    obfuscate = not (isinstance(stream_options, Mapping)
                     and stream_options.get("include_obfuscation") is False)
    return Request(body=body, model=model, input_items=items, tools=tools, include=list(include),
                   stream=bool(body.get("stream")), background=background, store=store, obfuscate=obfuscate,
                   max_output_tokens=max_out, previous_response_id=prev, conversation_id=conv_id)
