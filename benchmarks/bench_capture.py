"""Capture overhead: runmeter's in-process recorder against the bare SDK, on the same streams.

Three processes: the simulator (``runmeter simulate --latency none``), a *bare* client that never
imports runmeter, and a *recorded* client (``Recorder(include_results=False)``, so both sides send the
same requests and get the same bytes). Rounds alternate between the two clients, so machine noise
hits both alike. Each round runs K streamed runs of ~200 text deltas per API and reports the client's
CPU (process, all threads: the recorder's writer thread is included) per run and the added CPU per
delta event. Separately: what the injected ``include`` adds to the SDK's own parsing of an Assistants
file_search run with 20 results (bare SDK with vs. without the include, the same query).

Targets (issue: durability and scale): ≤ 3% added CPU per streamed run of 200 deltas, ≤ 2 µs per
delta event.

    .venv/bin/python benchmarks/bench_capture.py [--rounds 9] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap

CLIENT = textwrap.dedent(r"""
    import json, sys, time, warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    import openai
    side, base_url, db = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    rec = None
    if side == "recorded":
        from collector import Recorder
        rec = Recorder(db, include_results=False, fetch_final=False)
        client = rec.instrument(client)
    H = {"X-Runmeter-Answer-Sentences": sys.argv[4]}
    a = client.beta.assistants.create(model="gpt-4o")
    CONTENT = "step_details.tool_calls[*].file_search.results[*].content"

    def chat():
        n = 0
        for ch in client.chat.completions.create(model="gpt-4o", stream=True, extra_headers=H,
                messages=[{"role": "user", "content": "hello"}], stream_options={"include_usage": True}):
            n += bool(ch.choices and ch.choices[0].delta.content)
        return n

    def responses():
        events = client.responses.create(model="gpt-4o", input="hello", stream=True, extra_headers=H)
        return sum(e.type == "response.output_text.delta" for e in events)

    def assistants():
        t = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
        return sum(e.event == "thread.message.delta"
                   for e in client.beta.threads.runs.create(thread_id=t.id, assistant_id=a.id, stream=True,
                                                            extra_headers=H))

    def file_search(include):
        q = "refund window for damaged goods"
        t = client.beta.threads.create(messages=[{"role": "user", "content": q}])
        kw = {"include": [CONTENT]} if include else {}
        events = client.beta.threads.runs.create(thread_id=t.id, assistant_id=FS, stream=True, **kw)
        return sum(1 for _ in events)

    KINDS = {"chat": chat, "responses": responses, "assistants": assistants,
             "fs_plain": lambda: file_search(False), "fs_include": lambda: file_search(True)}
    FS = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "setup_fs":
            FS = cmd["assistant"]
            for warm in (chat, responses, assistants):
                warm()
            if rec is not None:
                rec.flush()  # the store exists and the writer is warm: measure the steady state
            print(json.dumps({"ok": True}), flush=True)
            continue
        fn, k = KINDS[cmd["kind"]], cmd["runs"]
        H["X-Runmeter-Answer-Sentences"] = str(cmd.get("sentences", sys.argv[4]))
        fn()  # warm
        p0, t0 = time.process_time_ns(), time.thread_time_ns()
        deltas = sum(fn() for _ in range(k))
        p1, t1 = time.process_time_ns(), time.thread_time_ns()
        # process CPU includes the recorder's writer thread at its normal 1 s cadence (no forced flush)
        print(json.dumps({"process_ns": (p1 - p0) / k, "thread_ns": (t1 - t0) / k, "deltas": deltas / k}),
              flush=True)
    if rec is not None:
        rec.close()
""")


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(proc: subprocess.Popen[str], cmd: dict[str, object]) -> dict[str, float]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(cmd) + "\n")
    proc.stdin.flush()
    out: dict[str, float] = json.loads(proc.stdout.readline())
    return out


def fs_assistant(base_url: str) -> str:
    """An assistant with file_search over a corpus that yields 20 results."""
    import io
    import warnings

    import openai

    from collector.simulator.corpus import documents

    warnings.simplefilter("ignore", DeprecationWarning)
    c = openai.OpenAI(base_url=base_url, api_key="sk-bench")
    ids = [
        c.files.create(file=(n, io.BytesIO(t.encode())), purpose="assistants").id for n, t in documents(1, 12)
    ]
    vs = c.vector_stores.create(file_ids=ids)
    for fid in ids:
        c.vector_stores.files.poll(fid, vector_store_id=vs.id, poll_interval_ms=5)
    a = c.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
    )
    return a.id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=20, help="runs per API per round")
    ap.add_argument("--sentences", type=int, default=31, help="answer length (31 sentences ≈ 200 deltas)")
    ap.add_argument("--sidecar", action="store_true",
                    help="run `runmeter serve` on the store first, so it holds the writer role and the "
                         "recorded client only spools (the deployment the README recommends)")
    a = ap.parse_args()
    sim = subprocess.Popen(
        [sys.executable, "-m", "collector.cli", "simulate", "--latency", "none", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sim.stdout is not None
    base_url = sim.stdout.readline().strip()
    tmp = tempfile.mkdtemp(prefix="runmeter-bench-")
    serve = None
    if a.sidecar:
        serve = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "serve", "--db", f"{tmp}/bench.duckdb", "--port", "0",
             "--no-poll"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert serve.stdout is not None
        serve.stdout.readline()  # its URL: it holds the writer role from now on
    sides = {
        s: start([sys.executable, "-c", CLIENT, s, base_url, f"{tmp}/bench.duckdb", str(a.sentences)])
        for s in ("bare", "recorded")
    }
    try:
        fs = fs_assistant(base_url)
        for p in sides.values():
            ask(p, {"op": "setup_fs", "assistant": fs})
        results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
        lengths = (a.sentences, max(1, a.sentences // 2))
        for _ in range(a.rounds):
            for kind in ("chat", "responses", "assistants"):
                for n in lengths:
                    for side, proc in sides.items():
                        results.setdefault((kind, side, n), []).append(
                            ask(proc, {"op": "run", "kind": kind, "runs": a.runs, "sentences": n})
                        )

        def med(kind: str, side: str, n: int, key: str) -> float:
            return statistics.median(r[key] for r in results[(kind, side, n)])

        def mean(kind: str, side: str, n: int, key: str) -> float:
            return statistics.fmean(r[key] for r in results[(kind, side, n)])

        mode = "a runmeter serve sidecar holds the writer role" if a.sidecar else "the recorder writes DuckDB"
        print(f"[{mode}]")
        print(
            f"capture overhead, {a.rounds} interleaved rounds x {a.runs} runs per API and length "
            "(CPU per run: median over blocks; whole process: mean)"
        )
        print(
            f"{'api':<11}{'deltas/run':>11}{'bare ms':>9}{'added, request thread':>23}"
            f"{'added, whole process':>22}{'marginal µs/delta':>19}"
        )
        long_, short = lengths
        for kind in ("chat", "responses", "assistants"):
            deltas = med(kind, "bare", long_, "deltas")
            b = med(kind, "bare", long_, "thread_ns")
            added = med(kind, "recorded", long_, "thread_ns") - b
            # whole process: the mean, so the recorder's writer flushes (once a second) are spread over runs
            added_p = mean(kind, "recorded", long_, "process_ns") - mean(kind, "bare", long_, "process_ns")
            added_short = med(kind, "recorded", short, "thread_ns") - med(kind, "bare", short, "thread_ns")
            marginal = (added - added_short) / (deltas - med(kind, "bare", short, "deltas"))
            print(
                f"{kind:<11}{deltas:>11.0f}{b / 1e6:>9.2f}"
                f"{f'{added / 1e3:.0f} µs ({added / b * 100:.1f}%)':>23}"
                f"{f'{added_p / 1e3:.0f} µs ({added_p / b * 100:.1f}%)':>22}{marginal / 1e3:>19.2f}"
            )
        plain = [
            ask(sides["bare"], {"op": "run", "kind": "fs_plain", "runs": a.runs}) for _ in range(a.rounds)
        ]
        incl = [
            ask(sides["bare"], {"op": "run", "kind": "fs_include", "runs": a.runs}) for _ in range(a.rounds)
        ]
        without = statistics.median(r["process_ns"] for r in plain)
        with_ = statistics.median(r["process_ns"] for r in incl)
        print(
            f"\ninjected include, Assistants file_search run with 20 results, bare SDK: "
            f"{without / 1e6:.2f} ms without, {with_ / 1e6:.2f} ms with "
            f"(+{(with_ - without) / 1e3:.0f} µs, +{(with_ - without) / without * 100:.1f}%)"
        )
    finally:
        for proc in sides.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=30)
        sim.terminate()
        sim.wait(timeout=10)
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
