"""The demo's mixed workload, driven through the unmodified SDK against any OpenAI-compatible server.

Assistants runs with file_search at several ``max_num_results``, a function-tool run, Responses with
file_search, and chat, in a deterministic order for a seed. Used by ``runmeter demo`` and tests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import openai
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput

from collector.simulator.corpus import documents

QUESTIONS = (
    "What is the refund window for damaged goods?",
    "How long does standard shipping take?",
    "What does the warranty cover?",
    "How do new customers get onboarded?",
    "How are security incidents reported?",
    "Can I return an item bought on sale?",
)

MAX_NUM_RESULTS_SETTINGS = (20, 10, 5)


@dataclass
class Fixture:
    """The objects a workload creates once and reuses."""

    vector_store_id: str
    assistants: dict[int, str] = field(default_factory=dict)
    """max_num_results -> assistant id."""
    tool_assistant_id: str = ""


def setup(client: openai.OpenAI, *, seed: int, n_documents: int = 6) -> Fixture:
    """Upload a corpus into one vector store and create the assistants the workload uses."""
    file_ids = []
    for name, text in documents(seed, n_documents):
        f = client.files.create(file=(name, text.encode()), purpose="assistants")
        file_ids.append(f.id)
    vs = client.vector_stores.create(name=f"runmeter-demo-{seed}", file_ids=file_ids)
    for fid in file_ids:
        client.vector_stores.files.poll(fid, vector_store_id=vs.id, poll_interval_ms=10)
    fx = Fixture(vector_store_id=vs.id)
    for n in MAX_NUM_RESULTS_SETTINGS:
        a = client.beta.assistants.create(
            model="gpt-4o",
            name=f"support-n{n}",
            instructions="Answer from the knowledge base and cite your sources.",
            tools=[{"type": "file_search", "file_search": {"max_num_results": n}}],
            tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
        )
        fx.assistants[n] = a.id
    t = client.beta.assistants.create(
        model="gpt-4o-mini",
        name="order-lookup",
        instructions="Look up orders with the tool.",
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "lookup_order",
                    "description": "Find an order by id",
                    "parameters": {
                        "type": "object",
                        "properties": {"order_id": {"type": "string"}},
                        "required": ["order_id"],
                    },
                },
            }
        ],
    )
    fx.tool_assistant_id = t.id
    return fx


def _assistants_run(client: openai.OpenAI, fx: Fixture, rng: random.Random, tags: dict[str, str]) -> None:
    n = rng.choice(MAX_NUM_RESULTS_SETTINGS)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": rng.choice(QUESTIONS)}])
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=fx.assistants[n], metadata=tags
    ) as stream:
        stream.until_done()


def _tool_run(client: openai.OpenAI, fx: Fixture, rng: random.Random, tags: dict[str, str]) -> None:
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f"Where is order {rng.randint(1000, 9999)}?"}]
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=fx.tool_assistant_id, metadata=tags, poll_interval_ms=10
    )
    if run.status == "requires_action" and run.required_action is not None:
        outputs: list[ToolOutput] = [
            {"tool_call_id": c.id, "output": '{"status": "shipped"}'}
            for c in run.required_action.submit_tool_outputs.tool_calls
        ]
        with client.beta.threads.runs.submit_tool_outputs_stream(
            thread_id=thread.id, run_id=run.id, tool_outputs=outputs
        ) as stream:
            stream.until_done()


def _responses_run(client: openai.OpenAI, fx: Fixture, rng: random.Random, tags: dict[str, str]) -> None:
    with client.responses.stream(
        model=rng.choice(("gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini")),
        input=rng.choice(QUESTIONS),
        tools=[
            {
                "type": "file_search",
                "vector_store_ids": [fx.vector_store_id],
                "max_num_results": rng.choice((20, 8)),
            }
        ],
        metadata=tags,
    ) as stream:
        stream.get_final_response()


def _chat_run(client: openai.OpenAI, fx: Fixture, rng: random.Random, tags: dict[str, str]) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": rng.choice(QUESTIONS)}],
        stream=True,
        stream_options={"include_usage": rng.random() < 0.8},
    )
    for _ in stream:
        pass


KINDS: tuple[
    tuple[str, float, Callable[[openai.OpenAI, Fixture, random.Random, dict[str, str]], None]], ...
] = (
    ("assistants", 0.45, _assistants_run),
    ("responses", 0.30, _responses_run),
    ("tool", 0.10, _tool_run),
    ("chat", 0.15, _chat_run),
)


def run(
    client: openai.OpenAI,
    fx: Fixture,
    *,
    runs: int,
    seed: int,
    progress: Callable[[int, str], None] | None = None,
) -> dict[str, int]:
    """Drive ``runs`` runs; returns how many of each kind ran. Failures of one run don't stop the rest."""
    rng = random.Random(f"workload:{seed}")
    counts: dict[str, int] = {}
    weights = [w for _, w, _ in KINDS]
    for i in range(runs):
        name, _, fn = rng.choices(KINDS, weights=weights)[0]
        tags = {"tenant": rng.choice(("acme", "globex", "initech")), "feature": name}
        try:
            fn(client, fx, rng, tags)
            counts[name] = counts.get(name, 0) + 1
        except openai.APIError:
            counts["errors"] = counts.get("errors", 0) + 1
        if progress is not None:
            progress(i + 1, name)
    return counts
