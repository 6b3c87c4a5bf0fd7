"""The OpenTelemetry names runmeter exports, pinned to one version of the GenAI semantic conventions.

Pinned version: **Semantic Conventions 1.40.0** (GenAI, development stability), the release that has
``gen_ai.provider.name``, ``gen_ai.conversation.id``, the ``gen_ai.usage.cache_*`` and
``gen_ai.usage.reasoning.output_tokens`` attributes and the client time-to-first-chunk metric. The
strings are written out here, not imported, so an upgrade of ``opentelemetry-semantic-conventions``
cannot rename what runmeter emits; ``tests/test_otel.py`` checks each against the constants of the
installed package (0.66b2, whose GenAI names are still these).

runmeter's own names use the ``runmeter.`` namespace.
"""

from __future__ import annotations

from typing import Final

SEMCONV_VERSION: Final = "1.40.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

# -- span attributes (GenAI) -------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_OPENAI_RESPONSE_SERVICE_TIER: Final = "gen_ai.openai.response.service_tier"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
ERROR_TYPE: Final = "error.type"

# -- attribute values --------------------------------------------------------------------------------
PROVIDER_OPENAI: Final = "openai"
OPERATION_CHAT: Final = "chat"
OPERATION_INVOKE_AGENT: Final = "invoke_agent"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"
TOOL_FILE_SEARCH: Final = "file_search"
TOOL_TYPE_DATASTORE: Final = "datastore"

# -- metrics (GenAI client) --------------------------------------------------------------------------
GEN_AI_CLIENT_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
GEN_AI_CLIENT_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"

# -- runmeter's own ----------------------------------------------------------------------------------
RUNMETER_API: Final = "runmeter.api"
RUNMETER_STATUS: Final = "runmeter.status"
RUNMETER_RETRIEVED_CHUNKS: Final = "runmeter.retrieved_chunks"
RUNMETER_MAX_NUM_RESULTS: Final = "runmeter.max_num_results"
RUNMETER_FILE_SEARCH_CALLS: Final = "runmeter.file_search_calls"
RUNMETER_TIME_TO_FIRST_TOKEN: Final = "runmeter.time_to_first_token"
"""Seconds from the request to the first *text* (the conventions' first chunk counts any chunk)."""
RUNMETER_DURATION: Final = "runmeter.duration"
"""The recorded duration: for a run over several streams, their sum (the app's tool time excluded)."""
RUNMETER_STREAMS: Final = "runmeter.streams"
RUNMETER_MODEL_STEPS: Final = "runmeter.model_steps"
RUNMETER_TOTAL_TOKENS: Final = "runmeter.total_tokens"
RUNMETER_INCOMPLETE_REASON: Final = "runmeter.incomplete_reason"
RUNMETER_ERROR_CODE: Final = "runmeter.error_code"
RUNMETER_SCORE_THRESHOLD: Final = "runmeter.score_threshold"
RUNMETER_FS_RESULTS: Final = "runmeter.file_search.results"
RUNMETER_FS_SCORE_MIN: Final = "runmeter.file_search.score.min"
RUNMETER_FS_SCORE_MAX: Final = "runmeter.file_search.score.max"
RUNMETER_FS_SCORE_MEAN: Final = "runmeter.file_search.score.mean"
RUNMETER_CLIENT_TIME_TO_FIRST_TOKEN: Final = "runmeter.client.operation.time_to_first_token"
"""Histogram of :data:`RUNMETER_TIME_TO_FIRST_TOKEN`, named apart from the first-chunk metric."""

# -- histogram buckets --------------------------------------------------------------------------------
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    163.84, 327.68, 655.36,
)
"""The conventions' advice (0.01 … 81.92 s) with the tail extended: file_search runs outlast 82 s."""

TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)
"""The conventions' advice for ``gen_ai.client.token.usage``."""
