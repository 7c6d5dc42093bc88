"""Drift monitor, measured: false alarms on IMDB, detection of real shifts, and the cost of PSI over 1M records.

1. A model: the tiny DistilBERT of the tests (tests/conftest.py), trained for a few epochs on the 2,000 IMDB sample
   reviews so its confidences and labels mean something (or `--model-dir` any Hugging Face folder).
2. The reference, exactly as `evaluate` writes it (sentimentops.steps.evaluate.metrics.write_drift_reference) from 5,000 IMDB *train*
   reviews.
3. Prediction records (the predictor's JSON lines) for 20 windows of IMDB *test* reviews (no drift), for Rotten
   Tomatoes snippets (rt_polarity: shorter, another site) and for IMDB test with the label prior moved to 90%
   negative. Each window goes through sentimentops.steps.drift.cli.DriftMonitor (the code `drift watch` runs).
4. Speed: 1,000,000 records (resampled from the windows above) written as JSON lines, then timed: parse + PSI as one
   batch, the same through the windowed monitor (2,000 windows of 500), and Evidently's PSI report on them.

    .venv/bin/python benchmarks/drift_psi.py --out benchmarks/results/drift_psi.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

from sentimentops.steps.core.contract import class_ids_of
from sentimentops.steps.core.psi import DriftReference, window_psi
from sentimentops.steps.drift.cli import DriftMonitor
from sentimentops.steps.drift.records import parse_records, read_records
from sentimentops.steps.serve.records import record


def tiny_model(folder: Path, epochs: int) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.train.loop import LoopConfig, train
    from tests.conftest import build_tiny_distilbert

    torch.manual_seed(0)
    df = pd.read_parquet(DATA / "imdb" / "sample_train.parquet")
    build_tiny_distilbert(folder, df["text"].head(400).tolist())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    ids = tokenizer(df["text"].tolist(), truncation=True, max_length=256)["input_ids"]
    cfg = LoopConfig(epochs=epochs, batch_size=32, learning_rate=2e-3, max_length=256, seed=0, compile="off")
    train(model, ids, df["label"].astype(int).tolist(), cfg, pad_id=tokenizer.pad_token_id, progress=False)
    model.save_pretrained(folder)
    return folder


def records_for(model_dir: Path, texts: list[str], version: str = "1") -> list[str]:
    """The predictor's prediction records (docs/metrics.md) for these texts: no raw text. Tokenized by the
    predictor's TextEncoder at contract.MAX_TOKENS, scored like evaluate."""
    from sentimentops.steps.evaluate.scoring import encode, score_torch

    encoded = encode(model_dir, texts)
    probs = score_torch(model_dir, encoded, batch_size=64, precision="fp32")
    return [json.dumps(record(version, e.length, e.truncated, p, e.content, ts=0.0))
            for e, p in zip(encoded, probs, strict=True)]


def run_windows(reference: DriftReference, lines: list[str], window: int, persist: int) -> dict:
    fired: list[int] = []
    monitor = DriftMonitor(reference, window=window, threshold=0.2, persist=persist,
                           on_trigger=lambda _reason, result: fired.append(result.index))
    results = monitor.add(lines)
    psi = [r.psi for r in results if r.psi]  # a window judged too small (under min_window) has no PSI
    return {"windows": len(results), "alarms": sum(1 for r in results if r.drifted),
            "first_drifted_window": next((r.index + 1 for r in results if r.drifted), None),
            "webhook_after_window": fired[0] + 1 if fired else None,
            "psi_max_per_feature": {f: round(max(p[f] for p in psi), 4) for f in psi[0]},
            "psi_mean_per_feature": {f: round(float(np.mean([p[f] for p in psi])), 4) for f in psi[0]},
            "psi_first_window": {f: round(v, 4) for f, v in psi[0].items()}}


def speed(lines: list[str], reference: DriftReference, n: int, evidently_rows: int) -> dict:
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(lines), n)
    out: dict[str, float] = {"records": n}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        start = time.perf_counter()
        with open(path, "w") as fh:
            fh.write("\n".join(lines[i] for i in picks) + "\n")
        out["write_s"] = time.perf_counter() - start
        out["file_mb"] = path.stat().st_size / 1e6
        start = time.perf_counter()
        features, _ = read_records([path])
        out["parse_s"] = time.perf_counter() - start

        start = time.perf_counter()
        window_psi(reference, features)
        out["psi_batch_s"] = time.perf_counter() - start
        out["read_parse_psi_s"] = out["parse_s"] + out["psi_batch_s"]
        raw = path.read_bytes().splitlines()
        start = time.perf_counter()
        monitor = DriftMonitor(reference, window=500, persist=2)
        monitor.add(raw)
        out["windowed_monitor_s"] = time.perf_counter() - start
        out["windows"] = monitor.windows
        if evidently_rows:
            from sentimentops.steps.drift.report import current_frame, evidently_psi, reference_frame

            sub, _ = parse_records(raw[:evidently_rows])
            start = time.perf_counter()
            evidently_psi(reference_frame(reference), current_frame(sub), 0.2)
            out["evidently_rows"] = len(sub)
            out["evidently_s"] = time.perf_counter() - start
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "drift_psi.json")
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face folder (default: train the tiny model)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--persist", type=int, default=2)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--evidently-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    rng = np.random.default_rng(42)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model_dir = args.model_dir or tiny_model(Path(tmp) / "model", args.epochs)
        timings["model_s"] = time.perf_counter() - start
        train = pd.read_parquet(DATA / "imdb" / "train.parquet")
        test = pd.read_parquet(DATA / "imdb" / "test.parquet")
        rt = pd.read_parquet(DATA / "rt_polarity" / "rt_polarity.parquet")
        ref_rows = train.iloc[rng.permutation(len(train))[:5000]]
        start = time.perf_counter()
        from sentimentops.steps.evaluate.metrics import write_drift_reference

        ref_lines = records_for(model_dir, ref_rows["text"].tolist())
        ref_features, _ = parse_records(ref_lines)
        probs = np.array([json.loads(line)["probability"] for line in ref_lines])
        accuracy = float(np.mean(class_ids_of(probs) == ref_rows["label"].to_numpy().astype(int)))
        write_drift_reference(Path(model_dir), ref_rows["text"].tolist(), probs, Path(tmp))
        reference = DriftReference.read(Path(tmp) / "drift_reference.json")
        timings["reference_s"] = time.perf_counter() - start
        n = 20 * args.window
        order = rng.permutation(len(test))
        imdb = test.iloc[order[:n]]
        neg, pos = test[test.label == 0].sample(n=2700, random_state=1), test[test.label == 1].sample(n=300,
                                                                                                     random_state=1)
        prior = pd.concat([neg, pos]).sample(frac=1.0, random_state=2)
        snippets = rt.sample(n=3 * args.window, random_state=3)
        start = time.perf_counter()
        cases = {"imdb_test_20_windows": records_for(model_dir, imdb["text"].tolist()),
                 "rt_polarity": records_for(model_dir, snippets["text"].tolist()),
                 "imdb_90pct_negative": records_for(model_dir, prior["text"].tolist())}
        timings["score_s"] = time.perf_counter() - start
    results = {name: run_windows(reference, lines, args.window, args.persist) for name, lines in cases.items()}
    test_accuracy = float(np.mean([json.loads(x)["label"] == ("positive" if y else "negative")
                                   for x, y in zip(cases["imdb_test_20_windows"], imdb["label"], strict=True)]))
    report = {"window": args.window, "threshold": 0.2, "persist": args.persist,
              "model": str(args.model_dir or f"tiny DistilBERT, {args.epochs} epochs on 2,000 IMDB reviews"),
              "model_accuracy_reference_rows": round(accuracy, 4), "model_accuracy_imdb_windows": round(test_accuracy, 4),
              "reference_rows": int(ref_features.input_tokens.size), "cases": results,
              "speed_1m": speed(cases["imdb_test_20_windows"] + cases["rt_polarity"], reference, args.records,
                                args.evidently_rows),
              "timings": {k: round(v, 1) for k, v in timings.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"window {args.window} records, threshold 0.2, persist {args.persist}; model accuracy {test_accuracy:.3f}")
    print(f"{'case':24} {'windows':>7} {'alarms':>6} {'1st drift':>9} {'webhook':>7}  max PSI per feature")
    for name, r in results.items():
        psi = "  ".join(f"{k} {v:.3f}" for k, v in r["psi_max_per_feature"].items())
        print(f"{name:24} {r['windows']:>7} {r['alarms']:>6} {r['first_drifted_window'] or '-':>9} "
              f"{r['webhook_after_window'] or '-':>7}  {psi}")
    s = report["speed_1m"]
    print(f"\n{s['records']:,} records ({s['file_mb']:.0f} MB JSON lines):")
    for key in ("parse_s", "psi_batch_s", "read_parse_psi_s", "windowed_monitor_s", "evidently_s"):
        if key in s:
            print(f"  {key:22} {s[key]:8.2f} s")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
