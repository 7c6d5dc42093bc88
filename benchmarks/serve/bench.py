"""Serving benchmark: the project's predictor against the plain baseline (a transformers pipeline per request in
one FastAPI worker, benchmarks/serve/baseline_server.py) over the same model, in the same run, on 127.0.0.1.

A load generator (asyncio + aiohttp, keep-alive, fixed seed) replays real IMDB test reviews, full length and as
short snippets (the first 40 words), at fixed concurrency (closed loop) and at a fixed request rate (open loop,
latency counted from the scheduled send time, so a stalled server cannot hide its queue), with requests paced at
fixed intervals and, harsher, with Poisson arrivals. Reports requests/s,
p50/p95/p99, errors and the server's RSS per scenario; prints a table and writes JSON. Every phase is bounded in
time; the servers run one at a time (the CPU is shared), so each ratio comes from the same run.

    .venv/bin/python benchmarks/serve/bench.py --model /tmp/bench-model --out benchmarks/serve/results.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sentimentops.steps.core.client import free_port

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "imdb"
PY = sys.executable


def reviews(n: int, seed: int) -> tuple[list[str], list[str]]:
    frame = pd.read_parquet(DATA / "test.parquet", columns=["text"]).sample(n=n, random_state=seed)
    full = frame["text"].tolist()
    return full, [" ".join(t.split()[:40]) for t in full]


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


async def _post(session, url: str, text: str) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        async with session.post(url, json={"instances": [text]}) as response:
            await response.read()
            return response.status, time.perf_counter() - start
    except Exception:  # noqa: BLE001 - a dropped connection or a timeout counts as an error
        return 599, time.perf_counter() - start


async def closed_loop(url: str, texts: list[str], concurrency: int, duration: float, seed: int) -> dict:
    import aiohttp

    rng = random.Random(seed)
    results: list[tuple[int, float]] = []
    deadline = time.perf_counter() + duration
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker():
            while time.perf_counter() < deadline:
                results.append(await _post(s, url, rng.choice(texts)))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return summarize(results, elapsed)


async def open_loop(url: str, texts: list[str], rate: float, duration: float, seed: int,
                    arrivals: str) -> dict:
    """Requests sent at `rate` per second whatever the answers: `paced` at fixed intervals (what wrk2, vegeta and
    k6's constant-arrival-rate do) or `poisson` (random arrivals: bursts queue up, a harsher tail)."""
    import aiohttp

    rng = random.Random(seed)
    results: list[tuple[int, float]] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=512)) as s:
        async def one(at: float, text: str):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            status, _ = await _post(s, url, text)
            results.append((status, time.perf_counter() - at))  # from the scheduled time
        start = time.perf_counter()
        at, tasks = start, []
        while at < start + duration:
            at += rng.expovariate(rate) if arrivals == "poisson" else 1.0 / rate
            tasks.append(asyncio.create_task(one(at, rng.choice(texts))))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return summarize(results, elapsed)


def summarize(results: list[tuple[int, float]], elapsed: float) -> dict:
    ok = np.array([t for code, t in results if code == 200])
    errors = sum(code != 200 for code, _ in results)
    pct = (lambda q: round(float(np.percentile(ok, q)) * 1000, 1)) if ok.size else (lambda q: None)
    return {"requests": len(results), "ok": int(ok.size), "errors": int(errors),
            "errors_5xx": int(sum(code >= 500 for code, _ in results)),
            "rps": round(ok.size / elapsed, 2), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def start(kind: str, model: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if kind == "project":
        argv = [str(Path(PY).with_name("sentimentops")), "serve", "--model-dir", str(model), "--port", str(port)]
    else:
        argv = [PY, str(REPO / "benchmarks/serve/baseline_server.py"), "--model-dir",
                str(model / "artifacts" / "model"), "--port", str(port)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_server(kind: str, model: Path, plan: list[tuple], full: list[str], short: list[str], seed: int) -> dict:
    port = free_port()
    proc = start(kind, model, port)
    base = f"http://127.0.0.1:{port}"
    out: dict = {"server": kind, "scenarios": {}}
    try:
        wait_ready(base + "/health", proc, 300)
        url = base + "/predict"
        asyncio.run(closed_loop(url, short, 2, 3, seed))  # warm both paths
        for name, mode, texts, value, duration in plan:
            data = full if texts == "full" else short
            if mode != "concurrency" and callable(value):
                value = value(out)
            if value is None:
                continue
            coro = (closed_loop(url, data, value, duration, seed) if mode == "concurrency"
                    else open_loop(url, data, value, duration, seed, arrivals=mode))
            result = asyncio.run(coro)
            result.update({"concurrency" if mode == "concurrency" else "rate": round(value, 2),
                           "rss_mb": round(rss_mb(proc.pid), 1)})
            out["scenarios"][name] = result
            print(f"  {kind:8s} {name:24s} {json.dumps(result)}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def table(results: list[dict]) -> str:
    rows = ["| server | scenario | load | req/s | p50 ms | p95 ms | p99 ms | errors | RSS MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for server in results:
        for name, r in server["scenarios"].items():
            load = f"c={r['concurrency']}" if "concurrency" in r else f"{r['rate']} req/s"
            rows.append(f"| {server['server']} | {name} | {load} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | "
                        f"{r['p99_ms']} | {r['errors']} | {r['rss_mb']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a registered-layout folder (make_model.py)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "serve" / "results.json")
    args = parser.parse_args()
    full, short = reviews(args.reviews, args.seed)
    c, d = args.concurrency, args.duration

    def seventy(out: dict):  # 70% of the peak this server reached on full reviews
        peak = out["scenarios"].get(f"full c={c}", {}).get("rps")
        return 0.7 * peak if peak else None

    # the open-loop phases run twice as long: their p99 rests on a few hundred requests
    plan = [("single short c=1", "concurrency", "short", 1, d), (f"short c={c}", "concurrency", "short", c, d),
            (f"full c={c}", "concurrency", "full", c, d),
            ("full at 70% of peak, paced", "paced", "full", seventy, 2 * d),
            ("full at 70% of peak, Poisson", "poisson", "full", seventy, 2 * d)]
    results = []
    if not args.skip_baseline:
        print("baseline (transformers pipeline per request, FastAPI, 1 worker):", flush=True)
        # The open-loop phase is not run for the baseline: at our 70% rate it would only queue up to its timeouts.
        results.append(run_server("baseline", args.model, plan[:3], full, short, args.seed))
    print("project (steps/serve):", flush=True)
    results.append(run_server("project", args.model, plan, full, short, args.seed))
    report = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_at_end": os.getloadavg()},
              "model": str(args.model), "seed": args.seed, "duration_s": d, "results": results}
    if len(results) == 2:
        base, ours = (r["scenarios"] for r in results)
        report["speedup"] = {k: round(ours[k]["rps"] / base[k]["rps"], 2) for k in base
                             if k in ours and base[k]["rps"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    if "speedup" in report:
        print("throughput ratio project/baseline:", report["speedup"])


if __name__ == "__main__":
    main()
