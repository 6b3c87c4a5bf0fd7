"""What the proxy adds: time to first token and total time, direct vs. through the proxy, in one run.

Three processes, so no GIL is shared: a synthetic upstream that streams a Chat Completions answer of
``--events`` content deltas (one write per event, as the API flushes them, then a usage chunk and
``[DONE]``), the proxy (``collector.proxy``, real taps, a counting sink), and this client (a minimal
keep-alive HTTP/1.1 client on asyncio streams, so the client's own cost stays small and equal on both
sides; an SDK client costs ~47 us per event, far more than the proxy).

Measured:
* time to first token (first content delta) and total time, p50/p99, direct and proxied, at 1 and
  at ``--concurrency`` streams, alternating direct/proxied rounds so drift hits both sides alike;
* the proxy process's CPU (utime+stime from /proc) per streamed call, with the taps on and off;
* the proxy's resident memory after ``--mem-small`` and after ``--mem-large`` streams, in
  ``--mem-runs`` fresh proxy processes (the median is checked: at 200 concurrent streams the heap
  settles somewhere in a band a few MiB wide, differently in each process).

    .venv/bin/python benchmarks/bench_proxy.py [--events 200] [--single 300] [--concurrency 200]
        [--rounds 3] [--cpu-streams 1000] [--mem-small 1000] [--mem-large 10000] [--mem-runs 3]

Targets (issue): added TTFT p50 <= 1 ms and p99 <= 5 ms at one stream; proxy CPU <= 5 ms per 200-event
stream; RSS after 10,000 streams <= 5 MiB above RSS after 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                   "stream_options": {"include_usage": True}}).encode()


# -- the two server roles (run as subprocesses) ------------------------------------------------------
def chat_events(n: int) -> list[bytes]:
    """A Chat Completions stream of ``n`` content deltas, shaped like the API's."""
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764000000,
            "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_bench", "service_tier": "default"}

    def ev(choices: list[Any], usage: Any = None) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, "usage": usage}).encode() + b"\n\n"

    out = [ev([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None, "finish_reason": None}])]
    out += [ev([{"index": 0, "delta": {"content": f" tok{i}"}, "logprobs": None, "finish_reason": None}])
            for i in range(n)]
    out.append(ev([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    out.append(ev([], {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n,
                       "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                       "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}))
    out.append(b"data: [DONE]\n\n")
    return out


def serve_upstream(events: int, ttft_ms: float, gap_ms: float) -> None:
    from aiohttp import web

    from collector._aioserver import serve_forever

    payload = chat_events(events)

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "x-request-id": "req_bench", "openai-processing-ms": "1"})
        gap = float(request.headers.get("X-Bench-Gap-Ms", gap_ms)) / 1e3
        await resp.prepare(request)
        await resp.write(payload[0])
        await asyncio.sleep(ttft_ms / 1e3)
        for e in payload[1:]:
            await resp.write(e)
            await asyncio.sleep(gap)  # one write per event, as the API flushes tokens
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    asyncio.run(serve_forever(app, "127.0.0.1", 0, lambda url: print(url, flush=True)))


def serve_proxy(upstream: str, taps: bool) -> None:
    from collector.proxy import ProxyConfig, serve_forever
    from collector.proxy.app import run

    count = {"records": 0, "tokens": 0}

    def sink(record: Any) -> None:
        count["records"] += 1
        count["tokens"] += record.output_tokens or 0

    config = ProxyConfig(upstream=upstream, fetch_steps=False, fetch_final=False)
    run(serve_forever(config, sink, "127.0.0.1", 0, lambda url: print(url, flush=True),
                      tap_for=None if taps else (lambda *a, **k: None),
                      routes={"/stats": lambda: ("application/json", json.dumps(count).encode())}))


# -- the client side ---------------------------------------------------------------------------------
@dataclass
class Proc:
    popen: subprocess.Popen[str]
    url: str

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self) -> float:
        return int(Path(f"/proc/{self.popen.pid}/statm").read_text().split()[1]) * PAGE / 2**20

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(10)


def spawn(*args: str) -> Proc:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return Proc(p, p.stdout.readline().strip())


class Conn:
    """A minimal keep-alive HTTP/1.1 client for one connection: it only finds the first token and the
    chunked body's end, so the client's own CPU stays far below the upstream's and the proxy's."""

    def __init__(self, base: str) -> None:
        url = httpx2.URL(base)
        self.host, self.port, self.prefix = url.host, url.port or 80, url.path.rstrip("/")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def stream(self, gap_ms: float | None = None) -> tuple[float, float]:
        """(time to first content delta, total time) of one streamed call."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        extra = f"X-Bench-Gap-Ms: {gap_ms}\r\n" if gap_ms is not None else ""
        head = (f"POST {self.prefix}/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n{extra}"
                f"Content-Length: {len(BODY)}\r\n\r\n").encode()
        t0 = time.perf_counter()
        self.writer.write(head + BODY)
        ttft = -1.0
        tail = b""
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed mid-body")
            window = tail + data
            if ttft < 0 and TOKEN in window:
                ttft = time.perf_counter() - t0
            if window.endswith(b"\r\n0\r\n\r\n"):
                return ttft, time.perf_counter() - t0
            tail = window[-64:]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


TOKEN = b'"content": " tok'


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def latency(direct: str, proxied: str, *, concurrency: int, total: int, rounds: int,
                  gap_ms: float | None = None) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {k: {"ttft": [], "total": []} for k in ("direct", "proxy")}
    conns = {"direct": [Conn(direct) for _ in range(concurrency)],
             "proxy": [Conn(proxied) for _ in range(concurrency)]}
    try:
        for pool in conns.values():  # open and warm every connection
            await asyncio.gather(*(c.stream() for c in pool))
        per_round = max(1, total // rounds)
        for _ in range(rounds):
            for side, pool in conns.items():
                if concurrency == 1:
                    results = [await pool[0].stream(gap_ms) for _ in range(per_round)]
                else:
                    results = list(await asyncio.gather(*(c.stream(gap_ms) for c in pool)))
                out[side]["ttft"] += [r[0] for r in results]
                out[side]["total"] += [r[1] for r in results]
    finally:
        for pool in conns.values():
            for c in pool:
                c.close()
    return out


def report_latency(title: str, res: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    print(f"\n{title}  (n={len(res['direct']['ttft'])} per side)")
    print(f"  {'':10} {'direct p50':>11} {'proxy p50':>10} {'added':>8}   {'direct p99':>11} "
          f"{'proxy p99':>10} {'added':>8}")
    figures: dict[str, float] = {}
    for metric in ("ttft", "total"):
        d, p = res["direct"][metric], res["proxy"][metric]
        d50, p50, d99, p99 = pct(d, .5) * 1e3, pct(p, .5) * 1e3, pct(d, .99) * 1e3, pct(p, .99) * 1e3
        figures[f"{metric}_added_p50_ms"], figures[f"{metric}_added_p99_ms"] = p50 - d50, p99 - d99
        print(f"  {metric:10} {d50:9.3f}ms {p50:8.3f}ms {p50 - d50:+7.3f}ms   {d99:9.3f}ms {p99:8.3f}ms "
              f"{p99 - d99:+7.3f}ms   (ratio p50 {p50 / d50:.2f}x)")
    return figures


async def run_many(base: str, n: int, concurrency: int) -> None:
    """``n`` streamed calls over ``concurrency`` keep-alive connections."""
    left = [n]
    conns = [Conn(base) for _ in range(concurrency)]

    async def worker(c: Conn) -> None:
        while left[0] > 0:
            left[0] -= 1
            await c.stream()

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()


def cpu_per_stream(proxy: Proc, n: int, concurrency: int) -> float:
    asyncio.run(run_many(proxy.url, 50, concurrency))  # warm-up
    before = proxy.cpu_seconds()
    asyncio.run(run_many(proxy.url, n, concurrency))
    time.sleep(0.2)
    return (proxy.cpu_seconds() - before) / n * 1e3


def stats(proxy: Proc) -> dict[str, int]:
    data: dict[str, int] = httpx2.get(proxy.url.removesuffix("/v1") + "/stats").json()
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["bench", "upstream", "proxy", "proxy-notap"], default="bench")
    ap.add_argument("--upstream", default="")
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--ttft-ms", type=float, default=5.0, help="upstream delay before the first token")
    ap.add_argument("--gap-ms", type=float, default=0.5,
                    help="upstream pause between tokens (the event loop rounds it up to ~1 ms)")
    ap.add_argument("--concurrent-gap-ms", type=float, default=20.0,
                    help="pause between tokens in the concurrent run (the API streams ~50 tokens/s)")
    ap.add_argument("--single", type=int, default=200, help="streams per side at concurrency 1")
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-streams", type=int, default=1000)
    ap.add_argument("--mem-small", type=int, default=1000)
    ap.add_argument("--mem-large", type=int, default=10000)
    ap.add_argument("--mem-runs", type=int, default=3, help="fresh proxies the memory figure is taken from")
    args = ap.parse_args()
    if args.role == "upstream":
        return serve_upstream(args.events, args.ttft_ms, args.gap_ms)
    if args.role in ("proxy", "proxy-notap"):
        return serve_proxy(args.upstream, taps=args.role == "proxy")

    upstream = spawn("--role", "upstream", "--events", str(args.events), "--ttft-ms", str(args.ttft_ms),
                     "--gap-ms", str(args.gap_ms))
    proxy = spawn("--role", "proxy", "--upstream", upstream.url)
    bare = spawn("--role", "proxy-notap", "--upstream", upstream.url)
    try:
        print(f"bench_proxy: {args.events}-event chat streams (first token after {args.ttft_ms:g} ms, then "
              f"one event per ~{max(args.gap_ms, 1):g} ms); upstream {upstream.url}; proxy {proxy.url}")
        one = report_latency("1 stream at a time",
                             asyncio.run(latency(upstream.url, proxy.url, concurrency=1,
                                                 total=args.single, rounds=args.rounds)))
        many = report_latency(f"{args.concurrency} concurrent streams, one event per "
                              f"{args.concurrent_gap_ms:g} ms",
                              asyncio.run(latency(upstream.url, proxy.url, concurrency=args.concurrency,
                                                  total=args.concurrency * args.rounds, rounds=args.rounds,
                                                  gap_ms=args.concurrent_gap_ms)))
        cpu = cpu_per_stream(proxy, args.cpu_streams, 20)
        cpu_bare = cpu_per_stream(bare, args.cpu_streams, 20)
        print(f"\nproxy CPU per {args.events}-event stream: {cpu:.2f} ms with taps "
              f"({cpu_bare:.2f} ms relay alone, taps {cpu - cpu_bare:+.2f} ms)")
        st = stats(proxy)
        print(f"records {st['records']}, output tokens {st['tokens']} "
              f"(expected {st['records'] * args.events})")
        growths = []
        recorded_all = st["tokens"] == st["records"] * args.events
        for _ in range(args.mem_runs):  # a fresh proxy each time: the allocator settles differently per run
            fresh = spawn("--role", "proxy", "--upstream", upstream.url)
            try:
                asyncio.run(run_many(fresh.url, args.mem_small, args.concurrency))
                time.sleep(0.3)
                rss_small = fresh.rss_mib()
                asyncio.run(run_many(fresh.url, args.mem_large - args.mem_small, args.concurrency))
                time.sleep(0.3)
                rss_large = fresh.rss_mib()
                ok = stats(fresh)["records"] == args.mem_large
            finally:
                fresh.stop()
            growths.append(rss_large - rss_small)
            recorded_all = recorded_all and ok
            print(f"proxy RSS: {rss_small:.1f} MiB after {args.mem_small} streams, {rss_large:.1f} MiB after "
                  f"{args.mem_large} ({rss_large - rss_small:+.2f} MiB){'' if ok else '; RECORDS MISSING'}")
        growth = sorted(growths)[len(growths) // 2]
        print(f"RSS growth, median of {len(growths)} fresh proxies: {growth:+.2f} MiB")
        checks: list[tuple[str, bool]] = [
            ("added TTFT p50 <= 1 ms at 1 stream", one["ttft_added_p50_ms"] <= 1.0),
            ("added TTFT p99 <= 5 ms at 1 stream", one["ttft_added_p99_ms"] <= 5.0),
            (f"proxy CPU <= 5 ms per {args.events}-event stream", cpu <= 5.0),
            ("RSS growth 1k->10k <= 5 MiB (median)", growth <= 5.0),
            ("every stream recorded", recorded_all),
        ]
        print()
        for name, ok in checks:
            print(f"  [{'ok' if ok else 'MISS'}] {name}")
        print(f"  (at {args.concurrency} streams: added TTFT p50 {many['ttft_added_p50_ms']:+.2f} ms, "
              f"p99 {many['ttft_added_p99_ms']:+.2f} ms)")
    finally:
        for p in (bare, proxy, upstream):
            p.stop()


if __name__ == "__main__":
    main()
