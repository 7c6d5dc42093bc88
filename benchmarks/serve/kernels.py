"""The compute ceiling under the serving benchmark: tokens/s of one model call, int8 ONNX (what the predictor runs)
against torch fp32 (what the baseline's pipeline runs), on 1 and 2 threads, for a snippet-sized and a full-review
input, on the same model folder. No HTTP, no batching: if the servers' throughput ratio sits at this ratio, the
server adds no overhead of its own and only a faster kernel can raise it.

    .venv/bin/python benchmarks/serve/kernels.py --model .sentimentops/bench-model --out benchmarks/serve/results-kernels.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from sentimentops.steps.core.backends import OnnxBackend, TorchBackend

REPO = Path(__file__).resolve().parents[2]


def median_ms(call, reps: int) -> float:
    call()  # warm this shape
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a registered-layout folder (make_model.py)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[53, 300], help="tokens per input (batch 1)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "serve" / "results-kernels.json")
    args = parser.parse_args()
    model_dir, onnx = args.model / "artifacts" / "model", args.model / "artifacts" / "onnx" / "model.onnx"
    precision = json.loads((onnx.parent / "export.json").read_text())["precision"]
    rng = np.random.default_rng(0)
    inputs = {n: rng.integers(1000, 20000, (1, n)).astype(np.int64) for n in args.lengths}
    # the serving backends themselves: OnnxBackend as the predictor runs it (one core plain, all cores spinning:
    # the solo path), TorchBackend on the CPU as the baseline's pipeline runs the model
    configs = [(f"onnx-{precision}", 1, lambda: OnnxBackend(onnx, model_dir, "kernels", 1)),
               (f"onnx-{precision}", 2, lambda: OnnxBackend(onnx, model_dir, "kernels", 2, spin=True)),
               ("torch-fp32", 1, lambda: TorchBackend(model_dir, "cpu", 1)),
               ("torch-fp32", 2, lambda: TorchBackend(model_dir, "cpu", 2))]
    rows = []
    for backend, threads, make in configs:
        call = make()
        for n, ids in inputs.items():
            ms = median_ms(lambda ids=ids, call=call: call(ids, np.ones_like(ids)), args.reps)
            rows.append({"backend": backend, "threads": threads, "tokens": n, "ms": round(ms, 2),
                         "tokens_per_s": round(n / ms * 1000)})
            print(json.dumps(rows[-1]), flush=True)
    speed = {(r["backend"].split("-")[0], r["threads"], r["tokens"]): r["tokens_per_s"] for r in rows}
    ratios = {f"{n} tokens, {t} thread(s)": round(speed[("onnx", t, n)] / speed[("torch", t, n)], 2)
              for n in args.lengths for t in (1, 2)}
    report = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
              "model": str(args.model), "precision": precision, "rows": rows, "ratio_onnx_over_torch": ratios}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| backend | threads | tokens | ms | tokens/s |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['threads']} | {r['tokens']} | {r['ms']} | {r['tokens_per_s']} |")
    print("tokens/s ratio ONNX/torch:", ratios)


if __name__ == "__main__":
    main()
