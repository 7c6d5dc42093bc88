"""`sentimentops serve`: the predictor over a model folder or a registered MLflow model, on uvicorn.

`--model-uri models:/sentiment@champion` resolves the alias in the registry, downloads the registered pyfunc folder
(MLmodel + the `model_dir`, `onnx` and `drift_reference` artifacts) and serves it with its registered version;
`--model-dir DIR` serves a pyfunc folder (in the cluster, the storage initializer's /mnt/models) or a plain Hugging
Face folder, with the version given by `--model-version` / SENTIMENTOPS_MODEL_VERSION.

The port opens at once; readiness (`/v2/health/ready`, `/health`) stays 503 until the model is loaded and a warm-up
inference ran, and stays 503 with the reason in the log if the artifact is missing or corrupt (no crash loop).
SIGTERM: readiness turns 503, no new connections are accepted, in-flight and queued requests are answered, then
the process exits (within `grace_s`).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, load_settings
from sentimentops.steps.serve.batching import BatchSettings
from sentimentops.steps.serve.model import Limits, ModelInfo, SentimentModel, ServeOptions


class ServeSettings(CommonSettings):
    section: ClassVar[str] = "serve"
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 in the container).")
    port: int = 8080
    backend: str = Field("auto", description="auto | onnx-int8 | onnx-fp32 | torch")
    threads: int | None = Field(None, description="Intra-op threads per model call (ONNX default 1).")
    workers: int | None = Field(None, description="Model-calling threads (ONNX default: one per core).")
    max_padding: float = 0.25
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_batch_tokens: int = 512
    solo_max_tokens: int = Field(1024, description="An idle server runs a batch of at most this many padded "
                                 "tokens on all cores (0: never).")
    wait_when_idle: bool = Field(False, description="Gather max_wait_ms even on an idle server (fuller batches, "
                                                    "max_wait_ms more latency for a lone request).")
    max_payload_bytes: int = 1_000_000
    max_instances: int = 64
    truncation: str = Field("truncate", description="truncate | reject (400) inputs over 512 tokens")
    prediction_log: Path | None = Field(None, description="JSON-lines prediction records for the drift monitor.")
    log_text: bool = Field(False, description="Also write the raw text into the prediction records.")
    grace_s: int = Field(30, description="SIGTERM: seconds to drain in-flight requests.")


def resolve(uri: str, settings: CommonSettings, cache: Path) -> tuple[Path, ModelInfo]:
    """`models:/name@alias` or `models:/name/N` -> (local pyfunc folder, info with the concrete version)."""
    from sentimentops.steps.core.tracking import configure, download_model_dir

    match = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", uri)
    if not match:
        raise ValueError(f"unsupported model URI {uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match.groups()
    client = configure(settings)
    version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    folder = download_model_dir(settings, f"models:/{name}/{version.version}", cache / f"{name}-{version.version}")
    root = next((p for p in (folder, *folder.parents) if (p / "MLmodel").is_file()), folder)
    return root, ModelInfo(name=name, version=str(version.version), run_id=version.run_id or "")


def options_from(settings: ServeSettings) -> ServeOptions:
    if settings.truncation not in ("truncate", "reject"):
        raise ValueError(f"truncation must be truncate or reject, got {settings.truncation!r}")
    return ServeOptions(
        backend=settings.backend, threads=settings.threads, workers=settings.workers, log_text=settings.log_text,
        limits=Limits(max_payload_bytes=settings.max_payload_bytes, max_instances=settings.max_instances,
                      truncation=settings.truncation),
        batching=BatchSettings(max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                               max_queue=settings.max_queue, max_batch_tokens=settings.max_batch_tokens,
                               max_padding=settings.max_padding, solo_max_tokens=settings.solo_max_tokens,
                               wait_when_idle=settings.wait_when_idle))


def build(folder: Path, info: ModelInfo, settings: ServeSettings):
    from sentimentops.steps.serve.app import create_app
    from sentimentops.steps.serve.metrics import Metrics
    from sentimentops.steps.serve.records import PredictionLog

    metrics = Metrics()
    records = (PredictionLog(settings.prediction_log, log_text=settings.log_text)
               if settings.prediction_log else None)
    model = SentimentModel(info.name, folder, info, options_from(settings), metrics=metrics, records=records)
    return model, create_app(model, metrics)


def run(app, settings: ServeSettings) -> None:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT readiness turns 503 first; uvicorn then stops accepting and drains."""

        def handle_exit(self, sig, frame) -> None:
            app.state.serve["draining"] = True
            logging.getLogger("sentimentops.serve").info("signal %s: draining in-flight requests", sig)
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after shutdown (exit status -15); a drained SIGTERM is a clean
            # stop, so exit 0 (as it does as PID 1 in the container, where the re-raised signal is ignored).
            if sig == signal.SIGTERM and self._captured_signals[-1:] == [sig]:
                self._captured_signals.pop()

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.grace_s, timeout_keep_alive=65, lifespan="on")
    DrainingServer(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path)
    source.add_argument("--model-uri")
    parser.add_argument("--model-name", default="sentiment")
    parser.add_argument("--model-version", default=os.environ.get("SENTIMENTOPS_MODEL_VERSION", "unversioned"))
    for flag in ("host", "backend", "truncation"):
        parser.add_argument(f"--{flag}")
    for flag in ("port", "threads", "workers", "max-batch-size", "max-queue", "max-batch-tokens", "solo-max-tokens",
                 "max-payload-bytes", "max-instances", "grace-s"):
        parser.add_argument(f"--{flag}", type=int)
    parser.add_argument("--max-wait-ms", type=float)
    parser.add_argument("--max-padding", type=float)
    parser.add_argument("--prediction-log", type=Path)
    parser.add_argument("--log-text", action="store_true", default=None)
    parser.add_argument("--wait-when-idle", action="store_true", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("model_dir", "model_uri", "model_name", "model_version")}
    settings = load_settings(ServeSettings, overrides)
    if args.model_uri:
        try:
            from mlflow.exceptions import MlflowException
        except ImportError:  # the serve image ships no MLflow: in the cluster KServe mounts the model instead
            print(f"serve: --model-uri {args.model_uri} needs MLflow, which this image does not have: serve a "
                  "folder (--model-dir; in the cluster set inferenceService.storageUri, and KServe's storage "
                  "initializer copies the model to /mnt/models)", file=sys.stderr)
            return 2

        try:
            folder, info = resolve(args.model_uri, settings, settings.home / "serving-cache")
        except (MlflowException, OSError, ValueError, KeyError) as err:  # no such alias/model/artifact: say so
            print(f"serve: cannot resolve {args.model_uri}: {err}", file=sys.stderr)
            return 2
        info = ModelInfo(name=args.model_name, version=info.version, run_id=info.run_id)
    else:
        folder, info = args.model_dir, ModelInfo(name=args.model_name, version=args.model_version)
    try:
        options_from(settings)
    except ValueError as err:
        print(f"serve: {err}", file=sys.stderr)
        return 2
    _model, app = build(folder, info, settings)
    run(app, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
