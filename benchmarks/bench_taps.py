"""Per-delta cost of runmeter's taps vs. the SDK's own SSEDecoder + json.loads on the same bytes.

Each API's stream is a real capture's envelope (../shared/captures) with its text delta repeated N
times. The cost per delta event added is the time difference between an N-delta and a 0-delta
stream, divided by N; bytes arrive one event per chunk, as a server flushes them.

    .venv/bin/python benchmarks/bench_taps.py [--deltas 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from openai._streaming import SSEDecoder as SDKDecoder

from collector.taps import tap_for

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "captures"


class Stream:
    """A request and its SSE body as events, with one delta event to repeat."""

    def __init__(
        self, name: str, method: str, path: str, request_body: bytes, events: list[bytes], delta_marker: bytes
    ) -> None:
        self.name, self.method, self.path, self.request_body = name, method, path, request_body
        first = next(i for i, e in enumerate(events) if delta_marker in e)
        self.head, self.delta = events[:first], events[first]
        self.tail = [e for e in events[first:] if delta_marker not in e]

    def events(self, n: int) -> list[bytes]:
        return [*self.head, *([self.delta] * n), *self.tail]


def _dotnet(name: str, path_end: str) -> tuple[str, str, bytes, list[bytes]]:
    for e in json.loads((CAPTURES / name).read_text())["Entries"]:
        url = urlsplit(e["RequestUri"])
        if url.path.endswith(path_end) and isinstance(e["ResponseBody"], list):
            body = "".join(e["ResponseBody"]).encode()
            return e["RequestMethod"], url.path, json.dumps(e["RequestBody"]).encode(), _events(body)
    raise LookupError(name)


def _events(body: bytes) -> list[bytes]:
    return [p + b"\n\n" for p in body.split(b"\n\n") if p.strip()]


def streams() -> list[Stream]:
    out = []
    m, p, rb, ev = _dotnet("AssistantsTests_StreamingRunWorks.json", "/runs")
    out.append(Stream("assistants", m, p, rb, ev, b"event: thread.message.delta"))
    m, p, rb, ev = _dotnet("ResponsesToolTests_FileSearchCallStreaming.json", "/responses")
    out.append(Stream("responses", m, p, rb, ev, b"event: response.output_text.delta"))
    chat = yaml.safe_load((CAPTURES / "test_chat_completion_streaming.yaml").read_text())["interactions"][0]
    body = chat["response"]["body"]["string"].encode()
    out.append(
        Stream(
            "chat",
            "POST",
            "/v1/chat/completions",
            chat["request"]["body"].encode(),
            _events(body),
            b'"content":" is"',
        )
    )
    return out


def run_tap(s: Stream, chunks: list[bytes]) -> None:
    tap = tap_for(s.method, s.path, "", s.request_body, sent_wall=0.0, sent_ns=0)
    assert tap is not None
    tap.response_started(200, "text/event-stream; charset=utf-8", 1)
    ns = time.monotonic_ns
    for c in chunks:
        tap.feed(c, ns())
    recs = tap.close(complete=True, now_wall=1.0, now_ns=ns())
    assert recs and recs[0].status == "completed", recs


def run_sdk(_: Stream, chunks: list[bytes]) -> None:
    for sse in SDKDecoder().iter_bytes(iter(chunks)):
        if sse.data.startswith("[DONE]"):
            break
        json.loads(sse.data)


def best(fn: Callable[[Stream, list[bytes]], None], s: Stream, chunks: list[bytes], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(s, chunks)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deltas", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    n = args.deltas
    print(f"{'api':<11}{'tap µs/delta':>14}{'sdk decoder+json.loads µs/delta':>34}{'ratio':>8}")
    for s in streams():
        empty, full = s.events(0), s.events(n)
        tap = (best(run_tap, s, full, args.repeat) - best(run_tap, s, empty, args.repeat)) / n * 1e6
        sdk = (best(run_sdk, s, full, args.repeat) - best(run_sdk, s, empty, args.repeat)) / n * 1e6
        print(f"{s.name:<11}{tap:>14.2f}{sdk:>34.2f}{tap / sdk:>8.2f}")


if __name__ == "__main__":
    main()
