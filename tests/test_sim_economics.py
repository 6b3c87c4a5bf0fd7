"""The simulator bills like the service: lowering max_num_results saves the dropped chunks' tokens,
once per later model step, plus their per-result overhead (Assistants and Responses alike)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Final

import openai
import pytest

from collector.simulator import Simulator, economics
from collector.simulator.core import count_tokens
from collector.simulator.corpus import documents

pytestmark = pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")

QUESTIONS = (
    "What is the refund window for damaged goods?",
    "How are security incidents reported?",
    "What does the warranty cover?",
)
CONTENT: Final = "step_details.tool_calls[*].file_search.results[*].content"


def knowledge_base(client: openai.OpenAI) -> str:
    ids = [
        client.files.create(file=(n, io.BytesIO(t.encode())), purpose="assistants").id
        for n, t in documents(5, 6)
    ]
    vs = client.vector_stores.create(name="kb", file_ids=ids)
    for fid in ids:
        client.vector_stores.files.poll(fid, vector_store_id=vs.id, poll_interval_ms=5)
    return vs.id


def assistants_run(client: openai.OpenAI, vs: str, n: int, question: str) -> tuple[int, list[int]]:
    """Billed input tokens of one run, and the token counts of its results in rank order."""
    a = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search", "file_search": {"max_num_results": n}}],
        tool_resources={"file_search": {"vector_store_ids": [vs]}},
    )
    t = client.beta.threads.create(messages=[{"role": "user", "content": question}])
    run = client.beta.threads.runs.create_and_poll(thread_id=t.id, assistant_id=a.id, poll_interval_ms=5)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=t.id, include=[CONTENT])
    tokens = []
    for step in steps.data:
        if step.step_details.type == "tool_calls":
            for call in step.step_details.tool_calls:
                if call.type == "file_search":
                    tokens += [
                        count_tokens(r.content[0].text or "")
                        for r in call.file_search.results or [] if r.content
                    ]
    assert run.usage is not None
    return run.usage.prompt_tokens, tokens


def responses_run(client: openai.OpenAI, vs: str, n: int, question: str) -> tuple[int, list[int]]:
    r = client.responses.create(
        model="gpt-4o",
        input=question,
        include=["file_search_call.results"],
        tools=[{"type": "file_search", "vector_store_ids": [vs], "max_num_results": n}],
    )
    tokens = [
        count_tokens(res.text or "")
        for item in r.output
        if item.type == "file_search_call"
        for res in item.results or []
    ]
    assert r.usage is not None
    return r.usage.input_tokens, tokens


def test_economics_are_the_documented_ones() -> None:
    """The README's simulator section states these; a change must change the documentation too."""
    assert (economics.RESULT_OVERHEAD_TOKENS, economics.CALL_OVERHEAD_TOKENS,
            economics.TOOL_STEP_OVERHEAD_TOKENS, economics.RESPONSES_STEPS_AFTER_SEARCH) == (38, 300, 96, 2)


def world(seed: int) -> Simulator:
    return Simulator(seed=seed, epoch=1_764_000_000, latency="none")


@pytest.mark.parametrize(
    ("run", "later_steps"),
    [
        (assistants_run, 1),  # the message step after the search
        (responses_run, economics.RESPONSES_STEPS_AFTER_SEARCH),
    ],
)
def test_lower_max_num_results_saves_dropped_chunks_per_later_step(
    run: Callable[[openai.OpenAI, str, int, str], tuple[int, list[int]]], later_steps: int
) -> None:
    for question in QUESTIONS:
        results = {}
        for n in (20, 5):
            with world(seed=3) as sim:  # same seed, same requests: only N differs
                client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
                vs = knowledge_base(client)
                results[n] = run(client, vs, n, question)
                client.close()
        (input20, tokens20), (input5, tokens5) = results[20], results[5]
        assert len(tokens20) > 5 and len(tokens5) == 5
        assert tokens5 == tokens20[:5], "the top 5 are the same chunks"
        dropped = tokens20[5:]
        per_step = sum(dropped) + economics.RESULT_OVERHEAD_TOKENS * len(dropped)
        assert input20 - input5 == later_steps * per_step


def test_each_model_step_pays_its_whole_prompt() -> None:
    """The tool step pays the base prompt; the message step pays it again plus the search payload."""
    with world(seed=4) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test")
        vs = knowledge_base(client)
        first, tokens = assistants_run(client, vs, 10, QUESTIONS[0])
        entries = [e for e in sim.ledger.usage if e.api == "assistants"]
        tool_step, message_step = entries[-2], entries[-1]
        assert message_step.input_tokens - tool_step.input_tokens == economics.search_payload_tokens(tokens)
        assert first == tool_step.input_tokens + message_step.input_tokens
        client.close()
