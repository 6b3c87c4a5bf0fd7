"""Nothing runmeter makes per exchange waits for the cycle collector: taps, decoders and connections are
freed by reference counting as soon as they are done.

A reference cycle per exchange (a tap and the decoder calling back into it; an HTTP parser and the
connection protocol it calls back) left a proxy's resident memory drifting by several MiB over 10,000
streams, depending on when the next full collection ran. ``gc.DEBUG_SAVEALL`` keeps whatever the
collector had to free, so the test names any runmeter object found there.
"""

from __future__ import annotations

import collections
import gc
import time
from collections.abc import Callable

import openai
import pytest
from call_paths import Kb, knowledge_base

from collector.instrument import instrument, uninstrument
from collector.proxy.app import Proxy
from collector.record import RunRecord
from collector.simulator import Simulator

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


def _workload(client: openai.OpenAI, kb: Kb) -> Callable[[], None]:
    def once() -> None:
        for _ in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": "hi"}],
                                                stream_options={"include_usage": True}):
            pass
        with client.responses.stream(model="gpt-4o-mini", input="hi") as s:
            for _ in s:
                pass
        thread = client.beta.threads.create()
        with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=kb.assistant_id) as run:
            run.until_done()
        client.beta.threads.runs.create_and_poll(thread_id=client.beta.threads.create().id,
                                                 assistant_id=kb.assistant_id, poll_interval_ms=5)

    return once


def _runmeter_garbage(once: Callable[[], None], rounds: int = 5) -> dict[str, int]:
    once()  # first use: imports, pools, caches
    time.sleep(0.3)
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(rounds):
            once()
        time.sleep(0.5)  # the background steps fetches finish
        gc.collect()
        found = collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
            if (type(o).__module__ or "").startswith("collector"))
        bound = collections.Counter(
            f"method of {type(o.__self__).__qualname__}" for o in gc.garbage
            if type(o).__name__ == "method" and type(o.__self__).__module__.startswith("collector"))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return dict(found + bound)


@pytest.fixture
def kb(sim: Simulator) -> Kb:
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as setup:
        return knowledge_base(setup)


def test_the_proxy_leaves_nothing_for_the_cycle_collector(sim: Simulator, kb: Kb) -> None:
    records: list[RunRecord] = []
    with Proxy(upstream=sim.base_url, sink=records.append) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test", max_retries=0)
        try:
            assert _runmeter_garbage(_workload(client, kb)) == {}
        finally:
            client.close()
    assert len(records) > 20


def test_the_in_process_hook_leaves_nothing_for_the_cycle_collector(sim: Simulator, kb: Kb) -> None:
    records: list[RunRecord] = []
    client = instrument(openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0),
                        records.append)
    try:
        assert _runmeter_garbage(_workload(client, kb)) == {}
    finally:
        uninstrument(client)
        client.close()
    assert len(records) > 20
