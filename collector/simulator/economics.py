"""How the simulated service bills input tokens. PRIVATE to the simulator.

``analysis/`` must never import this module: it learns the overhead and repeat counts from the runs'
own recorded data, as it would have to against the real service. The parameters are documented in
the README's simulator section.

The model: each model step pays for its whole prompt. A prompt is the system + thread text, plus,
once a file_search has run, every result's text with a per-result formatting overhead and a fixed
per-call overhead (the tool call and its instructions). Assistants runs show their steps on the wire
(one tool-calls step that decides to search, one message step that answers). A Responses file_search
response bills ``RESPONSES_STEPS_AFTER_SEARCH`` model steps after the search inside one usage block.
"""

from __future__ import annotations

from collections.abc import Sequence

RESULT_OVERHEAD_TOKENS = 38
"""Tokens of formatting around each result (file name, ids, separators) beyond its own text."""

CALL_OVERHEAD_TOKENS = 300
"""Tokens the tool call itself adds to later prompts (call, arguments, citation instructions)."""

TOOL_STEP_OVERHEAD_TOKENS = 96
"""Tokens of tool definitions that every prompt with file_search enabled carries."""

RESPONSES_STEPS_AFTER_SEARCH = 2
"""Model steps after a Responses file_search that pay for the results (a reflection step, then the
answer); Assistants show their one message step on the wire."""

CACHE_MIN_TOKENS = 1024
"""Prompts shorter than this are never cached; cached prefixes grow in ``CACHE_INCREMENT`` steps."""

CACHE_INCREMENT = 128

REASONING_SHARE = 0.6
"""Reasoning models spend this share of their output on reasoning tokens (before the answer)."""


def search_payload_tokens(result_tokens: Sequence[int]) -> int:
    """Tokens a search adds to every later prompt: results, their overhead and the call's."""
    if not result_tokens:
        return CALL_OVERHEAD_TOKENS
    return CALL_OVERHEAD_TOKENS + sum(result_tokens) + RESULT_OVERHEAD_TOKENS * len(result_tokens)


def cached_prefix(prompt_tokens: int, previous_prompt_tokens: int | None) -> int:
    """Cached input tokens when a prompt repeats a previous prompt's prefix (same thread, same
    instructions): the shared prefix rounded down to the cache increment, nothing below the minimum."""
    if previous_prompt_tokens is None:
        return 0
    shared = min(prompt_tokens, previous_prompt_tokens)
    if shared < CACHE_MIN_TOKENS:
        return 0
    return shared - (shared % CACHE_INCREMENT)


def is_reasoning_model(model: str) -> bool:
    """Whether the model spends reasoning tokens (o-series and gpt-5 family)."""
    m = model.lower()
    return m.startswith(("o1", "o3", "o4", "gpt-5"))


def reasoning_tokens(model: str, visible_output_tokens: int) -> int:
    """Hidden reasoning tokens billed as output on top of the visible answer."""
    if not is_reasoning_model(model):
        return 0
    return round(visible_output_tokens * REASONING_SHARE / (1 - REASONING_SHARE))
