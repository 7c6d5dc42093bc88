"""`sentimentops quickstart` (what `make run` runs): the whole training DAG through the local runner over the
rendered Argo spec, then the KServe predictor over the registered champion on 127.0.0.1, a few reviews sent to
it, each prediction printed with its label, probability and model version, and the server stopped.

Online it trains distilbert-base-uncased on a small IMDB sample; offline (the hub unreachable) the steps say so in
one line and fall back to local data and the offline encoder (profile `local`).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

from sentimentops.steps.core.client import predict, sentimentops, wait_ready
from sentimentops.steps.core.config import CommonSettings, load_settings
from sentimentops.steps.core.errors import StageError, UsageError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.processes import spawn, stop

log = get_logger(__name__)

# Sized for minutes on a 2-core laptop CPU, chosen by measurement (benchmarks/train_recipes.py, AMD EPYC, 2 cores;
# IMDB sample test set at the serving length): the local profile freezes the embeddings and the lowest 2 layers
# (faster steps, and better on small data), lr 2e-4, 2,070 training reviews at 128 tokens cut head + tail: 87.6%
# served (int8), where issue 11's full fine-tune of 1,800 reviews at lr 1e-4 reached 84.1%. make run took 5 min 49 s
# there; 400 test reviews keep evaluate (both ONNX precisions, paired) at 83 s.
DEMO_PARAMETERS = {
    "profile": "local",
    "source": "auto",
    "sample-size": "2300",
    "test-size": "400",
    "base-model": "distilbert-base-uncased",
    "epochs": "1",
    "batch-size": "16",
    "learning-rate": "2e-4",
    "max-length": "128",
    "reason": "quickstart",
    "rollout": "skip",  # no InferenceService locally: `sentimentops rollout --target local` is the local canary
}
REVIEWS = [
    "One of the best films I have seen in years: moving, funny and beautifully acted.",
    "A tedious, badly written mess. I wanted my two hours back.",
    "The plot was thin, but the performances and the music carried it; I left smiling.",
    "Boring characters, a predictable twist and terrible dialogue. Avoid.",
]


def run_pipeline(run_dir: Path, parameters: dict[str, str]) -> int:
    argv = [sentimentops(), "pipeline", "run", "--run-dir", str(run_dir)]
    for key, value in parameters.items():
        argv += ["-p", f"{key}={value}"]
    return subprocess.call(argv)


def served_alias(settings: CommonSettings) -> str:
    """`champion`; `challenger` when no version passed the promotion policy yet (said in one line), so the demo
    still ends with a served prediction."""
    from sentimentops.steps.core.tracking import alias_version

    if alias_version(settings, "champion") is not None:
        return "champion"
    challenger = alias_version(settings, "challenger")
    reasons = challenger.tags.get("promotion.reasons", "") if challenger is not None else ""
    log.warning("quickstart: no champion yet (%s); serving the challenger instead", reasons)
    return "challenger"


def describe_model(settings: CommonSettings, alias: str) -> list[str]:
    """What the served version measured and where its card is: the card is copied out of MLflow next to the state
    (`<home>/model-cards/`) so it can be opened as a file; MLflow's UI shows it under the training run too."""
    import mlflow

    from sentimentops.steps.core.tracking import alias_version, configure

    version = alias_version(settings, alias)
    if version is None:
        return []
    tags = version.tags or {}
    lines = [f"quickstart: {settings.registered_model} version {version.version}: test accuracy "
             f"{float(tags.get('test_accuracy', 'nan')):.4f} at the serving length"
             + (f" (TF-IDF baseline {float(tags['tfidf_test_accuracy']):.4f})" if "tfidf_test_accuracy" in tags
                else "")]
    if card := tags.get("model_card"):
        configure(settings)
        dest = settings.home / "model-cards" / f"{settings.registered_model}-v{version.version}"
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=card, dst_path=str(dest)))
        lines.append(f"quickstart: model card: {path} (in MLflow: {card})")
    return lines


def serve_and_predict(settings: CommonSettings, port: int, reviews: list[str], timeout_s: float) -> int:
    log_path = settings.home / "quickstart-serve.log"
    alias = served_alias(settings)
    uri = f"models:/{settings.registered_model}@{alias}"
    with log_path.open("w") as server_log:
        server = spawn([sentimentops(), "serve", "--model-uri", uri, "--port", str(port)],
                       stdout=server_log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        if not wait_ready(base, "sentiment", timeout_s) or server.poll() is not None:
            raise StageError(f"the server did not become ready; see {log_path}")
        # The command's result, on stdout: what was served and its answers (logs go to stderr).
        emit(f"quickstart: serving {uri} on {base}")
        for text, pred in zip(reviews, predict(base, "sentiment", reviews), strict=True):
            emit(f"  {pred['label']:>8}  p(positive)={pred['probability']:.3f}  "
                 f"{pred['model_name']} version {pred['model_version']}  | {text}")
        for line in describe_model(settings, alias):
            emit(line)
        return 0
    finally:
        stop(server, grace_s=30)
        emit("quickstart: server stopped")


def _override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"-p expects KEY=VALUE, got {text!r}")
    return key, value


@stage_main("quickstart")
def main(argv: list[str] | None = None) -> int:
    # Not a stage: no settings section of its own. It always runs the `local` profile (the demo's), whatever
    # SENTIMENTOPS_PROFILE says; SENTIMENTOPS_HOME still chooses the state folder.
    parser = argparse.ArgumentParser(prog="sentimentops quickstart", description=__doc__)
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="override a workflow parameter of the demo run")
    parser.add_argument("--run-dir", type=Path, help="default: <home>/runs/quickstart (re-runs reuse its steps)")
    parser.add_argument("--port", type=int, default=8080, help="port of the local predictor (default: 8080)")
    parser.add_argument("--ready-timeout", type=float, default=120.0,
                        help="seconds to wait for the predictor to become ready (default: 120)")
    args = parser.parse_args(argv)
    settings = load_settings(CommonSettings, {"profile": "local"})
    parameters = dict(DEMO_PARAMETERS)
    parameters.update(_override(kv) for kv in args.parameter)
    run_dir = args.run_dir or settings.home / "runs" / "quickstart"
    if (code := run_pipeline(run_dir, parameters)) != 0:
        log.error("quickstart: the pipeline failed (exit %d); logs under %s", code, run_dir)
        return code
    return serve_and_predict(settings, args.port, REVIEWS, args.ready_timeout)
