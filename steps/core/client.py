"""`sentimentops predict`: send reviews to a running predictor (V1 protocol) and print each prediction."""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sentimentops.steps.core.errors import StageError, UsageError, stage_main
from sentimentops.steps.core.logs import emit, get_logger

log = get_logger(__name__)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a local server (the OS picks it; the probe socket is closed again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sentimentops() -> str:
    """The project's console script beside this interpreter (the same venv)."""
    return str(Path(sys.executable).with_name("sentimentops"))


def post_json(url: str, body: dict, timeout: float = 30.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(base_url: str, model: str, timeout_s: float) -> bool:
    """Polls the V2 readiness endpoint (503 until the model loaded and warmed up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/v2/models/{model}/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def predict(base_url: str, model: str, texts: list[str]) -> list[dict]:
    return post_json(f"{base_url}/v1/models/{model}:predict", {"instances": texts})["predictions"]


@stage_main("predict")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops predict", description=__doc__)
    parser.add_argument("texts", nargs="+", help="reviews to classify")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the predictor (default: %(default)s)")
    parser.add_argument("--model", default="sentiment", help="the model name (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for readiness first")
    args = parser.parse_args(argv)
    if args.wait < 0:
        raise UsageError(f"--wait must be >= 0, got {args.wait:g}")
    if not all(text.strip() for text in args.texts):
        raise UsageError("empty review: give each review as a non-empty argument")
    if args.wait and not wait_ready(args.url, args.model, args.wait):
        raise StageError(f"{args.url} was not ready within {args.wait:.0f} s")
    try:
        predictions = predict(args.url, args.model, args.texts)
    except urllib.error.HTTPError as err:  # the predictor refused the input (400, 413): its reason, one line
        detail = err.read().decode(errors="replace").strip()
        if 400 <= err.code < 500:
            raise UsageError(f"the predictor answered {err.code}: {detail}") from err
        raise StageError(f"the predictor answered {err.code}: {detail}") from err
    except (urllib.error.URLError, OSError) as err:  # nothing listening (yet): transient, retried
        raise StageError(f"cannot reach {args.url}: {err}") from err
    for text, pred in zip(args.texts, predictions, strict=True):
        short = text if len(text) <= 60 else text[:57] + "..."
        emit(f"{pred['label']:>8}  p(positive)={pred['probability']:.3f}  "
              f"{pred['model_name']} v{pred['model_version']}  {short!r}")
    return 0
