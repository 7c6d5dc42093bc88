"""train: fine-tune AutoModelForSequenceClassification on the versioned dataset, tracked in MLflow.

This module is the thin part: settings, base-model resolution (with the offline fallback), tokenization, MLflow
bookkeeping and saving. The loop itself (batching, precision, DDP, throughput/MFU) is sentimentops.steps.train.loop,
checkpoints sentimentops.steps.train.checkpoint.

Checkpoints live outside the step's outputs (`checkpoint_dir`, default `{home}/checkpoints/train`), in a sub-folder
keyed by the dataset's content hash and the training settings: the local runner empties a step's outputs folder
before re-running it, so a killed train resumes mid-run from there, and other data or settings start afresh. On
Argo a retry runs in a new pod with a fresh filesystem: a checkpoint survives only on a volume or bucket mount, so
there set SENTIMENTOPS_TRAIN_CHECKPOINT_DIR to a path on one (without it, a retried train starts from step 0).
The checkpoint is deleted once the model is saved. Reuse of a finished step is the runner's decision, not this one's.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.contract import MAX_TOKENS, class_ids_of, keep_head_tail
from sentimentops.steps.core.errors import DataError, UsageError, stage_main
from sentimentops.steps.core.hub import go_offline, hub_reachable
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.manifests import (
    IngestManifest,
    VersionManifest,
    hash_dir,
    read_manifest,
    write_manifest,
)
from sentimentops.steps.core.production import FEEDBACK_PROVENANCE, PROVENANCE_COLUMN
from sentimentops.steps.core.tracking import (
    DATASET_MD5_TAG,
    DATASET_REMOTE_TAG,
    dataset_short_name,
    log_dataset,
    mlflow_run,
    split_rows,
)

log = get_logger(__name__)
LABELS = {0: "negative", 1: "positive"}
# Measured on the feedback loop (benchmarks/feedback_feasibility.py: 1,000 labelled Rotten Tomatoes snippets beside
# 2,070 IMDB reviews): x3 reached +3.2 points on held-out snippets against +1.8 for x1, IMDB test not lower.
FEEDBACK_REPEAT = 3


def oversample_feedback(train: pd.DataFrame, repeat: int, seed: int) -> pd.DataFrame:
    """`train` with each feedback row (provenance `feedback`) `repeat` times, base rows once, shuffled with `seed`.
    Done here, after ingest carved validation, so no copy of a row can sit in both train and validation, and the
    versioned dataset stays free of duplicates. A frame without feedback (or without the provenance column: a
    hand-made dataset) comes back unchanged."""
    if repeat <= 1 or PROVENANCE_COLUMN not in train.columns:
        return train
    feedback = train[train[PROVENANCE_COLUMN] == FEEDBACK_PROVENANCE]
    if not len(feedback):
        return train
    return pd.concat([train] + [feedback] * (repeat - 1), ignore_index=True).sample(
        frac=1.0, random_state=seed).reset_index(drop=True)


class TrainSettings(CommonSettings):
    section: ClassVar[str] = "train"
    base_model: str = Field("distilbert-base-uncased", description="Hub id or local folder of the encoder.")
    fallback_base_model: str = Field("", description="Offline fallback: a folder or `package:<module>`.")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(0, ge=0, description="Per-process batch size; 0 = chosen by data size and device "
                            "(sentimentops.steps.train.optim.batch_size_for: large batches on a GPU, 32 on CPU).")
    learning_rate: float = Field(5e-5, gt=0, description="Learning rate at batch size 32 (scaled for larger).")
    max_length: int = Field(MAX_TOKENS, ge=8, le=MAX_TOKENS,
                            description="Tokens per review in training; longer reviews are truncated.")
    seed: int = 42
    precision: str = Field("auto", pattern="^(auto|bf16|fp16|fp32)$")
    freeze_embeddings: bool = Field(False, description="Keep the encoder's embeddings fixed (no gradient, no "
                                    "optimizer state): faster steps on a CPU, little accuracy lost on small data.")
    freeze_layers: int = Field(0, ge=0, description="Keep the encoder's lowest N transformer layers fixed.")
    feedback_repeat: int = Field(FEEDBACK_REPEAT, ge=1, le=20, description="Each labelled production row in train "
                                 "(ingest's provenance `feedback`) is seen this many times per epoch; base rows once. "
                                 "A few hundred snippets beside thousands of base reviews otherwise barely move the "
                                 "model (docs/retraining-on-feedback.md). 1 = no oversampling.")
    num_threads: int = Field(0, ge=0, description="torch CPU threads (0 = torch's default).")
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints (0 = each epoch end).")
    max_steps: int = Field(0, ge=0, description="Stop after this many steps (0 = no limit; for smoke tests).")
    checkpoint_dir: Path = Field(Path("{home}/checkpoints/train"), description="Root of the checkpoints, outside "
                                 "the step's outputs; a sub-folder per dataset content and training settings. On "
                                 "Argo a retry is a new pod: point it at a volume or bucket mount to resume there.")


class BaseModelError(UsageError):
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
    log.warning("offline: the Hugging Face hub is unreachable; fine-tuning %s instead of %s",
                path.name if path.name != "model" else fallback, base)
    return str(path), True


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Unpadded ids cut to max_length by the contract's head + tail rule, as the predictor cuts at its limit (the
    loop pads per batch: dynamic padding)."""
    tokenizer.model_max_length = 10**9  # no "longer than the maximum" warning: the cut below is the rule
    ids = tokenizer(texts, truncation=False, padding=False)["input_ids"]
    return [keep_head_tail(x, max_length) for x in ids]


# The settings that change the training trajectory: a checkpoint is resumed only under the same ones. max_steps,
# checkpoint_every and num_threads only stop, save or schedule the same run.
TRAJECTORY = ("base_model", "fallback_base_model", "epochs", "batch_size", "learning_rate", "max_length", "seed",
              "precision", "freeze_embeddings", "freeze_layers", "feedback_repeat")


def checkpoint_dir_for(settings: TrainSettings, dataset: Path, base_model_used: str) -> Path:
    """The checkpoint folder of this (dataset content, training settings), under settings.checkpoint_dir."""
    from sentimentops.steps.train.checkpoint import keyed_dir

    wanted = {**settings.model_dump(mode="json", include=set(TRAJECTORY)), "base_model_used": base_model_used}
    return keyed_dir(settings.checkpoint_dir, hash_dir(dataset), wanted)


def log_dataset_input(run_id: str, dataset: Path, version: Path) -> None:
    """The run's dataset input and `dataset/dataset.dvc` artifact (core.tracking.log_dataset), from the version
    step's pointer: the run that owns the model names the exact data snapshot, where MLflow's Datasets view shows
    it and `sentimentops data pull` finds it. A version folder whose manifest names no pointer (a hand-made one in
    a test) logs nothing; one that names a missing pointer is incomplete: a DataError."""
    manifest = read_manifest(version, VersionManifest)
    pointer = manifest.outputs.get("pointer")
    if not pointer:
        log.warning("train: %s names no DVC pointer: no dataset input logged", version)
        return
    if not (version / pointer).is_file():
        raise DataError(f"{version} has no {pointer}: the version step's output is incomplete")
    try:
        source = read_manifest(dataset, IngestManifest).refs.source
    except DataError:  # a dataset folder made by hand: its folder name is the best name there is
        source = Path(dataset).resolve().name
    logged = log_dataset(run_id, version / pointer, manifest.refs.dvc_remote or "", dataset_short_name(source),
                         split_rows(dataset))
    if not logged:
        log.info("train: the run already holds dataset %s", manifest.refs.dvc_md5)


def run_training(dataset: Path, version: Path, out: Path, settings: TrainSettings) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sentimentops.steps.core.scoring import predict_proba
    from sentimentops.steps.train.loop import LoopConfig
    from sentimentops.steps.train.loop import train as train_loop

    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    source, fallback = resolve_base_model(settings)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    stored = pd.read_parquet(dataset / "train.parquet")
    train_df = oversample_feedback(stored, settings.feedback_repeat, settings.seed)
    if len(train_df) > len(stored):
        log.info("train: %d feedback rows seen x%d per epoch (%d rows in all)",
                 (len(train_df) - len(stored)) // (settings.feedback_repeat - 1), settings.feedback_repeat,
                 len(train_df))
    val_df = pd.read_parquet(dataset / "validation.parquet")
    train_ids = tokenize(tokenizer, train_df["text"].tolist(), settings.max_length)
    val_ids = tokenize(tokenizer, val_df["text"].tolist(), settings.max_length)
    cfg = LoopConfig(epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                     seed=settings.seed, precision=settings.precision, max_length=settings.max_length,
                     checkpoint_every=settings.checkpoint_every, max_steps=settings.max_steps,
                     freeze_embeddings=settings.freeze_embeddings, freeze_layers=settings.freeze_layers)
    version_refs = read_manifest(version, VersionManifest).refs
    dataset_md5 = version_refs.dvc_md5
    params = {**settings.model_dump(include={"epochs", "batch_size", "learning_rate", "max_length", "seed",
                                              "precision", "freeze_embeddings", "freeze_layers",
                                              "feedback_repeat"}),
              "base_model": settings.base_model, "base_model_used": source, "offline_fallback": fallback,
              "train_rows": len(stored), "train_rows_seen": len(train_df), "validation_rows": len(val_df)}
    checkpoints = checkpoint_dir_for(settings, dataset, source)
    tags = {DATASET_MD5_TAG: dataset_md5, DATASET_REMOTE_TAG: version_refs.dvc_remote or "",
            "run.reason": settings.run_reason, "workflow": settings.workflow_name}
    with mlflow_run(settings, out, run_name=f"train-{settings.workflow_name}", tags=tags) as run:
        import mlflow

        mlflow.log_params(params)
        if os.environ.get("RANK", "0") == "0":  # one writer: ranks of a torchrun would race on the same input
            log_dataset_input(run.info.run_id, dataset, version)

        def on_log(log) -> None:
            metrics = {"train_loss": log.loss, "learning_rate": log.learning_rate,
                       "samples_per_s": log.samples_per_s, "tokens_per_s": log.tokens_per_s}
            if log.mfu is not None:
                metrics["mfu"] = log.mfu
            mlflow.log_metrics(metrics, step=log.step)

        validation: dict[str, float] = {}

        def on_epoch_end(epoch: int, result) -> None:
            probs = predict_proba(model, val_ids, pad_id=tokenizer.pad_token_id, precision=settings.precision)
            accuracy = float((class_ids_of(probs) == val_df["label"].to_numpy()).mean())
            validation["val_accuracy"] = accuracy
            log.info("train: epoch %d validation accuracy %.4f, loss %.6f", epoch, accuracy, result.final_loss,
                     extra={"epoch": epoch, "val_accuracy": accuracy, "loss": result.final_loss})
            mlflow.log_metrics({"val_accuracy": accuracy, "epoch_loss": result.final_loss}, step=result.steps)

        result = train_loop(model, train_ids, train_df["label"].astype(int).tolist(), cfg,
                            pad_id=tokenizer.pad_token_id, checkpoint_dir=checkpoints,
                            on_log=on_log, on_epoch_end=on_epoch_end)
        summary = {"samples_per_s": result.samples_per_s, "tokens_per_s": result.tokens_per_s,
                   "train_seconds": result.train_seconds, "final_loss": result.final_loss, "steps": result.steps,
                   "resumed_from_step": result.resumed_from_step, **validation}
        if result.mfu is not None:
            summary["mfu"] = result.mfu
        mlflow.log_metrics(summary)
        mlflow.set_tag("device", f"{result.device} ({result.precision}, world size {result.world_size})")
        mlflow.log_params({"batch_size_used": result.batch_size, "learning_rate_used": result.learning_rate,
                           "sdpa_backend": result.sdpa_backend, "compiled": result.compiled})
        model_dir = out / "model"
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        if os.environ.get("RANK", "0") == "0":  # one rank deletes; the others may still be saving their model
            shutil.rmtree(checkpoints, ignore_errors=True)  # the finished model supersedes them
        return {"params": params, "metrics": summary, "run_id": run.info.run_id, "dataset_md5": dataset_md5}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="the ingest step's output folder (parquet splits)")
    parser.add_argument("--version", type=Path, required=True, help="the version step's output folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder: model/ and manifest.json")


@stage_main("train")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(TrainSettings, argv, prog="sentimentops train", description=__doc__,
                                    add_arguments=_arguments)
    inputs = {"dataset": args.dataset, "version": args.version}
    wanted = settings.model_dump(mode="json", include={"base_model", "epochs", "batch_size", "learning_rate",
                                                       "max_length", "seed", "precision", "max_steps"})
    info = run_training(args.dataset, args.version, args.out, settings)
    write_manifest(args.out, "train", inputs=inputs, outputs={"model": "model/"},
                   params={"requested": wanted, **{k: v for k, v in info["params"].items()}},
                   metrics=info["metrics"],
                   refs={"mlflow_run_id": info["run_id"], "dvc_md5": info["dataset_md5"],
                         "rank": os.environ.get("RANK", "0")})
    return 0
