"""Capture overhead in instructions (callgrind), free of the timing noise of a shared machine.

Each client runs under ``valgrind --tool=callgrind`` against its own simulator (``--latency none``,
one seed and epoch, so every client is served byte-identical streams) and makes N streamed runs of one
API. The same client is run with N = LOW and N = HIGH runs, so the
process start-up cancels out: (instructions(HIGH) − instructions(LOW)) / (HIGH − LOW) is the cost of one
run. Sides:

- ``bare``: the unmodified SDK; runmeter is never imported;
- ``taps``: the SDK instrumented by runmeter with a sink that drops the records (the request path);
- ``recorder``: ``Recorder`` with its writer thread (whole process: the run's share of the DuckDB
  write, at close, is included).

It also runs ``bare`` and ``taps`` with answers of half the length, for the cost of one more delta.
Targets (issue: durability and scale): ≤ 3% added per streamed run of 200 deltas, ≤ 2 µs per delta
(here: instructions; at this machine's ~3 instructions/ns, 2 µs ≈ 6,000 instructions).

    .venv/bin/python benchmarks/bench_capture_instructions.py [--api responses] [--low 2 --high 10]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor

CLIENT = textwrap.dedent(r"""
    import sys, tempfile, warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    import openai
    side, base_url, api, n, sentences = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    client = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    rec = None
    if side == "taps":
        from collector.instrument import instrument
        instrument(client, lambda r: None, include_results=False, fetch_steps=False, fetch_final=False)
    elif side == "recorder":
        from collector import Recorder
        rec = Recorder(tempfile.mkdtemp() + "/b.duckdb", include_results=False, fetch_final=False,
                       flush_interval=3600)
        rec.instrument(client)
    H = {"X-Runmeter-Answer-Sentences": sentences}
    if api == "assistants":
        a = client.beta.assistants.create(model="gpt-4o")
    def run():
        if api == "chat":
            for _ in client.chat.completions.create(model="gpt-4o", stream=True, extra_headers=H,
                    messages=[{"role": "user", "content": "hello"}], stream_options={"include_usage": True}):
                pass
        elif api == "responses":
            for _ in client.responses.create(model="gpt-4o", input="hello", stream=True, extra_headers=H):
                pass
        else:
            t = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
            for _ in client.beta.threads.runs.create(thread_id=t.id, assistant_id=a.id, stream=True,
                                                     extra_headers=H):
                pass
    run()  # the first run's one-time work (imports on first use) is in both LOW and HIGH
    for _ in range(n):
        run()
    if rec is not None:
        rec.close()
""")


def instructions(side: str, api: str, n: int, sentences: int) -> int:
    """Total instructions of one client process under callgrind, against a simulator of its own (same
    seed and epoch for every client, so every client gets byte-identical streams)."""
    sim = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "simulate", "--latency", "none", "--seed", "1",
         "--epoch", "1764000000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        with tempfile.NamedTemporaryFile(suffix=".cg") as out:
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}", sys.executable, "-c",
                 CLIENT, side, base_url, api, str(n), str(sentences)],
                capture_output=True, text=True, timeout=1800)
    finally:  # the simulator never outlives its client, even when valgrind fails
        sim.terminate()
        sim.wait(timeout=10)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"{side} {api} n={n}: {proc.stderr[-2000:]}")
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=["chat", "responses", "assistants"], action="append")
    ap.add_argument("--low", type=int, default=2, help="runs in the short process (default 2)")
    ap.add_argument("--high", type=int, default=10,
                    help="runs in the long process (default 10); the per-run figure is the difference")
    ap.add_argument("--sentences", type=int, default=31, help="31 sentences ≈ 200 deltas")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("bench_capture_instructions: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    apis = a.api or ["chat", "responses", "assistants"]
    short = max(1, a.sentences // 2)
    sides = ("bare", "taps", "recorder")
    jobs = [(side, api, n, s) for api in apis for side in sides for n in (a.low, a.high)
            for s in ((a.sentences, short) if side != "recorder" else (a.sentences,))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(jobs, pool.map(lambda j: instructions(*j), jobs), strict=True))
    span = a.high - a.low
    print(f"instructions per streamed run (callgrind; N={a.low} vs N={a.high} runs; ~200 deltas per run)")
    print(f"{'api':<11}{'bare':>14}{'taps':>14}{'added':>9}{'recorder':>14}{'added':>9}"
          f"{'per extra delta':>17}")
    def per_run(side: str, api: str, s: int) -> float:
        return (counts[(side, api, a.high, s)] - counts[(side, api, a.low, s)]) / span

    for api in apis:
        bare, taps = per_run("bare", api, a.sentences), per_run("taps", api, a.sentences)
        rec = per_run("recorder", api, a.sentences)
        deltas = (a.sentences - short) * 6.5  # the half-length answers: ~6.5 deltas per sentence
        marginal = ((taps - per_run("taps", api, short)) - (bare - per_run("bare", api, short))) / deltas
        print(f"{api:<11}{bare:>14,.0f}{taps:>14,.0f}{(taps - bare) / bare * 100:>8.1f}%{rec:>14,.0f}"
              f"{(rec - bare) / bare * 100:>8.1f}%{marginal:>17,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
