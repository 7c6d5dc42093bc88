"""train: fine-tune AutoModelForSequenceClassification on the versioned dataset, tracked in MLflow.

This module is the thin part: settings, base-model resolution (with the offline fallback), tokenization, MLflow
bookkeeping and saving. The loop itself (batching, precision, checkpoints, DDP, throughput/MFU) is sentimentops.steps.train.loop.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, flags, load_settings
from sentimentops.steps.core.hub import go_offline, hub_reachable
from sentimentops.steps.core.manifests import read_manifest, reusable, write_manifest
from sentimentops.steps.core.tracking import mlflow_run

LABELS = {0: "negative", 1: "positive"}


class TrainSettings(CommonSettings):
    section: ClassVar[str] = "train"
    base_model: str = Field("distilbert-base-uncased", description="Hub id or local folder of the encoder.")
    fallback_base_model: str = Field("", description="Offline fallback: a folder or `package:<module>`.")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(0, ge=0, description="Per-process batch size; 0 = chosen by data size and device "
                            "(sentimentops.steps.train.loop.batch_size_for: large batches on a GPU, 32 on CPU).")
    learning_rate: float = Field(5e-5, gt=0, description="Learning rate at batch size 32 (scaled for larger).")
    max_length: int = Field(512, ge=8, le=512, description="Tokens per review; longer reviews are truncated.")
    seed: int = 42
    precision: str = Field("auto", pattern="^(auto|bf16|fp16|fp32)$")
    num_threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch's default).")
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints (0 = each epoch end).")
    max_steps: int = Field(0, ge=0, description="Stop after this many steps (0 = no limit; for smoke tests).")


class BaseModelError(RuntimeError):
    """The base model can be neither downloaded nor found locally."""


def package_model_dir(spec: str) -> Path:
    """`package:<module>` -> the `model/` folder shipped inside that installed package."""
    module = importlib.import_module(spec.split(":", 1)[1])
    return Path(module.__file__).parent / "model"


def resolve_base_model(settings: TrainSettings) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether the offline fallback was used)."""
    base = settings.base_model
    if base.startswith("package:"):
        return str(package_model_dir(base)), False
    if Path(base).is_dir():
        return base, False
    if hub_reachable():
        return base, False
    if not (settings.allow_offline_fallback and settings.fallback_base_model):
        raise BaseModelError(f"{base!r} is not a local folder and the Hugging Face hub is unreachable")
    go_offline()
    fallback = settings.fallback_base_model
    path = package_model_dir(fallback) if fallback.startswith("package:") else Path(fallback)
    print(f"offline: the Hugging Face hub is unreachable; fine-tuning {path.name if path.name != 'model' else fallback} "
          f"instead of {base}", flush=True)
    return str(path), True


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Unpadded ids: the loop pads per batch (dynamic padding)."""
    return tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]


def run_training(dataset: Path, version: Path, out: Path, settings: TrainSettings) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.train.loop import LoopConfig, predict_proba
    from sentimentops.steps.train.loop import train as train_loop

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    source, fallback = resolve_base_model(settings)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    train_df = pd.read_parquet(dataset / "train.parquet")
    val_df = pd.read_parquet(dataset / "validation.parquet")
    train_ids = tokenize(tokenizer, train_df["text"].tolist(), settings.max_length)
    val_ids = tokenize(tokenizer, val_df["text"].tolist(), settings.max_length)
    cfg = LoopConfig(epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                     seed=settings.seed, precision=settings.precision, max_length=settings.max_length,
                     checkpoint_every=settings.checkpoint_every, max_steps=settings.max_steps)
    dataset_md5 = read_manifest(version).refs.get("dvc_md5", "")
    params = {**settings.model_dump(include={"epochs", "batch_size", "learning_rate", "max_length", "seed",
                                              "precision"}),
              "base_model": settings.base_model, "base_model_used": source, "offline_fallback": fallback,
              "train_rows": len(train_df), "validation_rows": len(val_df)}
    tags = {"dataset.dvc_md5": dataset_md5, "run.reason": settings.run_reason, "workflow": settings.workflow_name}
    with mlflow_run(settings, out, run_name=f"train-{settings.workflow_name}", tags=tags) as run:
        import mlflow

        mlflow.log_params(params)

        def on_log(log) -> None:
            metrics = {"train_loss": log.loss, "learning_rate": log.learning_rate,
                       "samples_per_s": log.samples_per_s, "tokens_per_s": log.tokens_per_s}
            if log.mfu is not None:
                metrics["mfu"] = log.mfu
            mlflow.log_metrics(metrics, step=log.step)

        def on_epoch_end(epoch: int, result) -> None:
            probs = predict_proba(model, val_ids, pad_id=tokenizer.pad_token_id, precision=settings.precision)
            accuracy = float(((probs >= 0.5).astype(int) == val_df["label"].to_numpy()).mean())
            print(f"train: epoch {epoch} validation accuracy {accuracy:.4f}", flush=True)
            mlflow.log_metrics({"val_accuracy": accuracy, "epoch_loss": result.final_loss}, step=result.steps)

        result = train_loop(model, train_ids, train_df["label"].astype(int).tolist(), cfg,
                            pad_id=tokenizer.pad_token_id, checkpoint_dir=out / "checkpoints",
                            on_log=on_log, on_epoch_end=on_epoch_end)
        summary = {"samples_per_s": result.samples_per_s, "tokens_per_s": result.tokens_per_s,
                   "train_seconds": result.train_seconds, "final_loss": result.final_loss, "steps": result.steps}
        if result.mfu is not None:
            summary["mfu"] = result.mfu
        mlflow.log_metrics(summary)
        mlflow.set_tag("device", f"{result.device} ({result.precision}, world size {result.world_size})")
        mlflow.log_params({"batch_size_used": result.batch_size, "learning_rate_used": result.learning_rate,
                           "sdpa_backend": result.sdpa_backend, "compiled": result.compiled})
        model_dir = out / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the finished model supersedes them
        return {"params": params, "metrics": summary, "run_id": run.info.run_id, "dataset_md5": dataset_md5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops train", description=__doc__)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--version", type=Path, required=True, help="the version step's output folder")
    parser.add_argument("--base-model")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--precision")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = load_settings(TrainSettings, flags(args, "base_model", "epochs", "batch_size", "learning_rate",
                                                  "max_length", "seed", "precision"))
    inputs = {"dataset": args.dataset, "version": args.version}
    wanted = settings.model_dump(mode="json", include={"base_model", "epochs", "batch_size", "learning_rate",
                                                       "max_length", "seed", "precision", "max_steps"})
    if (done := reusable(args.out, "train", inputs, {"requested": wanted})) and (args.out / "model").is_dir():
        print(f"train: reusing {args.out} (same dataset and settings; MLflow run {done.refs['mlflow_run_id']})")
        return 0
    try:
        info = run_training(args.dataset, args.version, args.out, settings)
    except BaseModelError as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    write_manifest(args.out, "train", inputs=inputs, outputs={"model": "model/"},
                   params={"requested": wanted, **{k: v for k, v in info["params"].items()}},
                   metrics=info["metrics"],
                   refs={"mlflow_run_id": info["run_id"], "dvc_md5": info["dataset_md5"],
                         "rank": os.environ.get("RANK", "0")})
    return 0
