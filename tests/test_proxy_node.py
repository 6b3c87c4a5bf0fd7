"""A real client in another language through the proxy: the official ``openai`` package for Node.

The test installs ``openai@6.49.0`` (the last line that runs on Node 20) into a temp dir with npm,
then a Node script runs an Assistants stream, a Responses stream with file_search and a Chat stream
through the proxy in front of the simulator. The rows the proxy records must match what the Node
client itself saw: ids, statuses, token usage, file_search calls.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from collector.proxy import Proxy
from collector.record import RunRecord
from collector.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")

NODE_OPENAI = "openai@6.49.0"
KEY = "sk-node-secret-42"

SCRIPT = textwrap.dedent("""
    import OpenAI from "openai";
    const [baseURL, assistantId, vectorStoreId] = process.argv.slice(2);
    const client = new OpenAI({ baseURL, apiKey: process.env.NODE_KEY, maxRetries: 0 });
    const question = "What is the refund window for annual plans?";
    const out = {};

    const thread = await client.beta.threads.create({ messages: [{ role: "user", content: question }] });
    const runStream = client.beta.threads.runs.stream(thread.id, { assistant_id: assistantId });
    const events = [];
    runStream.on("event", (e) => events.push(e.event));
    const run = await runStream.finalRun();
    out.run = { id: run.id, status: run.status, usage: run.usage, events };

    const rs = client.responses.stream({
      model: "gpt-4o", input: question,
      tools: [{ type: "file_search", vector_store_ids: [vectorStoreId] }],
    });
    const response = await rs.finalResponse();
    out.response = {
      id: response.id, status: response.status, usage: response.usage,
      fileSearchCalls: response.output.filter((o) => o.type === "file_search_call").length,
    };

    const cs = client.chat.completions.stream({
      model: "gpt-4o", messages: [{ role: "user", content: question }],
      stream_options: { include_usage: true },
    });
    const chat = await cs.finalChatCompletion();
    out.chat = { id: chat.id, usage: chat.usage, text: chat.choices[0].message.content };
    console.log(JSON.stringify(out));
""")


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir with the Node ``openai`` package installed and the script beside it."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm/node is not installed (apt-get install nodejs npm); the Node client test needs them")
    root = tmp_path_factory.mktemp("node-openai")
    (root / "package.json").write_text(json.dumps({"name": "runmeter-node-check", "private": True,
                                                   "type": "module"}))
    r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", NODE_OPENAI], cwd=root,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"npm install {NODE_OPENAI} failed: {r.stderr[-2000:]}"
    (root / "check.mjs").write_text(SCRIPT)
    return root


@pytest.fixture
def stack() -> Iterator[tuple[Simulator, Proxy, list[RunRecord]]]:
    records: list[RunRecord] = []
    with Simulator(seed=3, epoch=1_764_000_000, latency="fast") as sim, \
            Proxy(upstream=sim.base_url, sink=records.append, include_results=True) as proxy:
        yield sim, proxy, records


def test_node_openai_through_the_proxy(node_client: Path,
                                       stack: tuple[Simulator, Proxy, list[RunRecord]]) -> None:
    sim, proxy, records = stack
    setup = openai.OpenAI(base_url=sim.base_url, api_key="sk-setup", max_retries=0)
    f = setup.files.create(file=("refunds.txt", b"Refunds for annual plans are accepted within 30 days."),
                           purpose="assistants")
    vs = setup.vector_stores.create(name="kb")
    setup.vector_stores.file_batches.create_and_poll(vs.id, file_ids=[f.id], poll_interval_ms=10)
    fs: Any = {"type": "file_search"}
    assistant = setup.beta.assistants.create(model="gpt-4o", tools=[fs],
                                             tool_resources={"file_search": {"vector_store_ids": [vs.id]}})
    setup.close()

    r = subprocess.run(["node", "check.mjs", proxy.base_url, assistant.id, vs.id], cwd=node_client,
                       capture_output=True, text=True, timeout=60, env={"PATH": _path(), "NODE_KEY": KEY})
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    proxy.stop()
    by_id: dict[str, RunRecord] = {}
    for rec in records:
        assert rec.run_id not in by_id or rec.api == "assistants"
        by_id.setdefault(rec.run_id, rec)

    run, response, chat = seen["run"], seen["response"], seen["chat"]
    assert run["status"] == "completed" and run["events"][-1] == "thread.run.completed"
    row = by_id[run["id"]]
    assert (row.api, row.status, row.streams) == ("assistants", "completed", 1)
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (
        run["usage"]["prompt_tokens"], run["usage"]["completion_tokens"], run["usage"]["total_tokens"])
    assert row.file_search_calls is not None and row.file_search_calls >= 1 and row.chunks

    row = by_id[response["id"]]
    assert (row.api, row.status, row.streams) == ("responses", "completed", 1)
    assert (row.input_tokens, row.output_tokens) == (response["usage"]["input_tokens"],
                                                     response["usage"]["output_tokens"])
    assert response["fileSearchCalls"] >= 1 and row.file_search_calls == response["fileSearchCalls"]
    assert row.retrieved_chunks is not None and row.retrieved_chunks == len(row.chunks) > 0

    row = by_id[chat["id"]]
    assert (row.api, row.status, row.streams) == ("chat", "completed", 1)
    assert (row.input_tokens, row.output_tokens) == (chat["usage"]["prompt_tokens"],
                                                     chat["usage"]["completion_tokens"])
    assert chat["text"]
    assert KEY not in repr(records)


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/bin:/bin")
