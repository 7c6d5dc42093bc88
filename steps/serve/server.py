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
import os
import signal
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.contract import MAX_TOKENS
from sentimentops.steps.core.errors import DataError, StageError, UsageError, stage_main
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.serve.batching import BatchSettings
from sentimentops.steps.serve.model import Limits, ModelInfo, SentimentModel, ServeOptions

log = get_logger("sentimentops.serve")


class ServeSettings(CommonSettings):
    section: ClassVar[str] = "serve"
    host: str = Field("127.0.0.1", description="Bind address (0.0.0.0 in the container).")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (KServe's container port: 8080).")
    backend: str = Field("auto", description="auto | onnx-int8 | onnx-fp32 | torch")
    threads: int | None = Field(None, description="Intra-op threads per model call (ONNX default 1).")
    workers: int | None = Field(None, description="Model-calling threads (ONNX default: one per core).")
    max_padding: float = Field(0.25, description="A batch group is cut before its padding exceeds this share of its "
                               "real tokens.")
    max_batch_size: int = Field(32, description="Instances gathered per batching cycle.")
    max_wait_ms: float = Field(5.0, description="Under load: how long the first waiting instance may wait for company.")
    max_queue: int = Field(256, description="Waiting instances before requests are answered 503.")
    max_batch_tokens: int = Field(512, description="Rows x padded length per model call.")
    solo_max_tokens: int = Field(1024, description="An idle server runs a batch of at most this many padded "
                                 "tokens on all cores (0: never).")
    wait_when_idle: bool = Field(False, description="Gather max_wait_ms even on an idle server (fuller batches, "
                                                    "max_wait_ms more latency for a lone request).")
    max_payload_bytes: int = Field(1_000_000, description="Largest request body in bytes (413 beyond it).")
    max_instances: int = Field(64, description="Most instances in one request (413 beyond it).")
    truncation: str = Field("truncate", description=f"truncate | reject (400) inputs over {MAX_TOKENS} tokens")
    prediction_log: Path | None = Field(None, description="JSON-lines prediction records for the drift monitor.")
    log_text: bool = Field(False, description="Also write the raw text into the prediction records.")
    grace_s: int = Field(30, description="SIGTERM: seconds to drain in-flight requests.")
    explain_max_instances: int = Field(8, ge=1, description="Most instances in one :explain request (400 beyond).")
    explain_max_words: int = Field(64, ge=1, description=":explain attributes at most this many words per "
                                   "instance (1 + this many forward passes); the rest is reported as not attributed.")
    explain_max_waiting: int = Field(4, ge=0, description=":explain requests queued behind the running one (503 "
                                     "beyond).")
    capture_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of requests whose texts and predictions "
                                "are captured to the production store (0: off, the default; 1: all). Request texts are "
                                "captured only when this is above 0; a feedback label always keeps the text it labels.")
    capture_buffer: int = Field(10_000, ge=1, description="Captured rows held in memory at most while storage is "
                                "slow or down; captures beyond it are dropped and counted.")
    capture_flush_rows: int = Field(500, ge=1, description="A capture part is written once this many rows wait.")
    capture_flush_s: float = Field(30.0, gt=0, description="... or once the oldest waited this many seconds; also "
                                   "the retry interval after a failed write.")
    capture_index: int = Field(20_000, ge=1, description="Recent captured instances (per replica, in memory) that "
                               "feedback by id can name.")
    feedback_unknown_ids: Literal["reject", "defer"] = Field(
        "reject", description="Feedback by id for an id this replica did not capture (or no longer indexes): reject "
        "answers 404; defer stores the label without text, answers 202 \"deferred\", and ingest joins it to its "
        "capture by id (several replicas behind one address: the one that captured a request is rarely the one a "
        "label reaches). The chart sets defer.")
    capture_seed: int | None = Field(None, description="Seed of the capture sampler (tests); unset: random.")
    feedback_buffer: int = Field(1_000, ge=1, description="Feedback labels held in memory while waiting for "
                                 "storage; beyond it POST /v1/feedback answers 503 (refused, not dropped).")
    feedback_flush_rows: int = Field(50, ge=1, description="A feedback part is written once this many labels wait.")
    feedback_flush_s: float = Field(5.0, gt=0, description="... or once the oldest waited this many seconds.")


def resolve(uri: str, settings: CommonSettings, cache: Path) -> tuple[Path, ModelInfo]:
    """`models:/name@alias` or `models:/name/N` -> (local pyfunc folder, info with the concrete version)."""
    from sentimentops.steps.core.tracking import download_model, registered_version

    name, version, run_id = registered_version(settings, uri)
    folder = download_model(settings, f"models:/{name}/{version}", cache / f"{name}-{version}")
    return folder.root, ModelInfo(name=name, version=version, run_id=run_id)


def options_from(settings: ServeSettings) -> ServeOptions:
    if settings.truncation not in ("truncate", "reject"):
        raise UsageError(f"truncation must be truncate or reject, got {settings.truncation!r}")
    if settings.capture_rate > 0 and not settings.production_store:
        raise UsageError("capture_rate > 0 needs a production_store (a folder or gs://BUCKET/PREFIX)")
    return ServeOptions(
        backend=settings.backend, threads=settings.threads, workers=settings.workers, log_text=settings.log_text,
        limits=Limits(max_payload_bytes=settings.max_payload_bytes, max_instances=settings.max_instances,
                      truncation=settings.truncation),
        batching=BatchSettings(max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                               max_queue=settings.max_queue, max_batch_tokens=settings.max_batch_tokens,
                               max_padding=settings.max_padding, solo_max_tokens=settings.solo_max_tokens,
                               wait_when_idle=settings.wait_when_idle))


def production_from(settings: ServeSettings, metrics):
    """Capture and feedback state, or None without a production store (feedback then answers 404)."""
    from sentimentops.steps.core.production import Store
    from sentimentops.steps.serve.capture import CaptureSettings, Production

    if not settings.production_store:
        return None
    try:
        store = Store(settings.production_store)
    except ValueError as err:
        raise UsageError(f"production_store {settings.production_store!r}: {err}") from err
    return Production(store, CaptureSettings(
        rate=settings.capture_rate, buffer=settings.capture_buffer, flush_rows=settings.capture_flush_rows,
        flush_s=settings.capture_flush_s, index=settings.capture_index, seed=settings.capture_seed,
        feedback_buffer=settings.feedback_buffer, feedback_flush_rows=settings.feedback_flush_rows,
        feedback_flush_s=settings.feedback_flush_s, defer_unknown_ids=settings.feedback_unknown_ids == "defer"),
        metrics)


def build(folder: Path, info: ModelInfo, settings: ServeSettings):
    from sentimentops.steps.serve.app import ExplainSettings, create_app
    from sentimentops.steps.serve.metrics import Metrics
    from sentimentops.steps.serve.records import PredictionLog

    metrics = Metrics()
    records = (PredictionLog(settings.prediction_log, log_text=settings.log_text)
               if settings.prediction_log else None)
    model = SentimentModel(info.name, folder, info, options_from(settings), metrics=metrics, records=records)
    explain = ExplainSettings(max_instances=settings.explain_max_instances, max_words=settings.explain_max_words,
                              max_waiting=settings.explain_max_waiting)
    if settings.capture_rate > 0:
        log.info("capture on: %.0f%% of requests (texts and predictions) to %s", 100 * settings.capture_rate,
                 settings.production_store)
    return model, create_app(model, metrics, explain=explain, production=production_from(settings, metrics))


def run(app, settings: ServeSettings) -> None:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT readiness turns 503 first; uvicorn then stops accepting and drains."""

        def handle_exit(self, sig, frame) -> None:
            app.state.serve["draining"] = True
            log.info("signal %s: draining in-flight requests", sig)
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after shutdown (exit status -15); a drained SIGTERM is a clean
            # stop, so exit 0 (as it does as PID 1 in the container, where the re-raised signal is ignored).
            if sig == signal.SIGTERM and self._captured_signals[-1:] == [sig]:
                self._captured_signals.pop()

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=settings.grace_s, timeout_keep_alive=65, lifespan="on")
    DrainingServer(config).run()


def _arguments(parser: argparse.ArgumentParser) -> None:
    """What to serve: not settings (a folder or a registry URI, the name and version the server reports)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="a registered pyfunc folder (the cluster's /mnt/models) or a "
                        "plain Hugging Face folder")
    source.add_argument("--model-uri", help="models:/NAME@ALIAS or models:/NAME/VERSION, resolved in MLflow")
    parser.add_argument("--model-name", default="sentiment", help="the model name in the protocols' paths "
                        "(default: sentiment)")
    # In the cluster the ServingRuntime sets SENTIMENTOPS_MODEL_VERSION from the pod's sentimentops.io/model-version
    # label (downward API); a pod without the label gets an empty value, reported as unversioned.
    parser.add_argument("--model-version", default=os.environ.get("SENTIMENTOPS_MODEL_VERSION") or "unversioned",
                        help="the version reported with --model-dir (default: SENTIMENTOPS_MODEL_VERSION or "
                        "unversioned)")


def resolve_uri(uri: str, settings: ServeSettings) -> tuple[Path, ModelInfo]:
    """`resolve`, with its failures in the stage exit table's terms (one line each, no traceback)."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError as err:  # the serve image ships no MLflow: in the cluster KServe mounts the model instead
        raise UsageError(f"--model-uri {uri} needs MLflow, which this image does not have: serve a folder "
                         "(--model-dir; in the cluster set inferenceService.storageUri, and KServe's storage "
                         "initializer copies the model to /mnt/models)") from err
    try:
        return resolve(uri, settings, settings.home / "serving-cache")
    except MlflowException as err:  # no such model, alias or version: the input is unusable; else (a lost server)
        missing = getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
        raise (DataError if missing else StageError)(f"cannot resolve {uri}: {err}") from err
    except (OSError, KeyError) as err:  # a missing or unreadable artifact
        raise DataError(f"cannot resolve {uri}: {err}") from err


@stage_main("serve")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(ServeSettings, argv, prog="sentimentops serve", description=__doc__,
                                    add_arguments=_arguments)
    options_from(settings)  # a bad setting stops here: exit 2, one line
    if args.model_uri:
        folder, info = resolve_uri(args.model_uri, settings)
        info = ModelInfo(name=args.model_name, version=info.version, run_id=info.run_id)
    else:
        folder, info = args.model_dir, ModelInfo(name=args.model_name, version=args.model_version)
    _model, app = build(folder, info, settings)
    run(app, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
