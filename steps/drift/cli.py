"""`sentimentops drift watch|report|webhook`: the drift monitor.

  watch    tails the predictor's prediction records (JSON lines, no raw text; docs/metrics.md), cuts them into
           tumbling windows of `--window` records, computes the cheap online PSI per feature against the model's
           reference (sentimentops.steps.core.psi) and exports it on its own /metrics as `sentiment_drift_psi{feature=...}`; when a
           window drifts (PSI > threshold on any feature) for `--persist` windows in a row it POSTs the reason to
           the retraining webhook (Argo Events in the cluster, `drift webhook` locally) once, and re-arms only
           after a clean window.
  report   Evidently's PSI report of the recent records against the reference sample (HTML + JSON), logged to
           MLflow (sentimentops.steps.drift.report).
  webhook  a local stand-in for the Argo Events webhook: starts the local runner on the training template with
           `-p reason=...` (sentimentops.steps.drift.webhook).

The reference comes with the model: `--reference FILE`, `--model-dir DIR` (a registered pyfunc folder, the cluster's
/mnt/models: MLmodel names the `drift_reference` artifact) or `--model-uri models:/sentiment@champion`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, flags, load_settings
from sentimentops.steps.core.psi import FEATURES, DriftReference, Features, features_from_predictions, window_psi

try:  # 3-5x faster record parsing; the pure-stdlib path gives the same values
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads


class DriftSettings(CommonSettings):
    section: ClassVar[str] = "drift"
    host: str = Field("127.0.0.1", description="Address of the monitor's /metrics (0.0.0.0 in a sidecar).")
    port: int = Field(9108, ge=0, le=65535, description="Port of the monitor's /metrics (0: any free port).")
    window: int = Field(500, ge=20, description="Records per window; sampling noise in PSI ~ (bins-1)/window.")
    threshold: float = Field(0.2, gt=0, description="PSI above which a feature has drifted (the DataDrift alert).")
    persist: int = Field(2, ge=1, description="Drifted windows in a row before the retraining webhook is called.")
    webhook_url: str = Field("", description="Retraining webhook (POST JSON {reason, psi, ...}); empty: none.")
    webhook_token_file: str = Field("", description="File with the webhook's bearer token (the EventSource's "
                                    "authSecret); empty: no Authorization header.")
    poll_seconds: float = Field(1.0, gt=0, description="How often the records file is read for new lines.")


# ---- prediction records ----------------------------------------------------------------------------------------

def parse_records(lines: list[bytes | str]) -> tuple[Features, list[str]]:
    """JSON lines -> feature columns and the model versions; malformed or incomplete lines are skipped."""
    try:  # fast path: the whole window as one JSON array (one parser call, columns by comprehension)
        recs = _loads(b"[" + b",".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"]")
        columns = ([float(r["input_tokens"]) for r in recs], [float(r["probability"]) for r in recs],
                   [float(r.get("content", 0.0)) for r in recs])
        return features_from_predictions(*columns), [str(r.get("model_version", "")) for r in recs]
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # a broken line somewhere: parse line by line and skip it
    tokens, probs, content, versions = [], [], [], []
    for line in lines:
        try:
            rec = _loads(line)
            row = (float(rec["input_tokens"]), float(rec["probability"]), float(rec.get("content", 0.0)))
        except (ValueError, KeyError, TypeError):
            continue
        tokens.append(row[0])
        probs.append(row[1])
        content.append(row[2])
        versions.append(str(rec.get("model_version", "")))
    return features_from_predictions(tokens, probs, content), versions


def read_records(paths: list[Path], last: int | None = None) -> tuple[Features, list[str]]:
    lines: list[bytes] = []
    for path in paths:
        with open(path, "rb") as fh:
            lines.extend(fh.read().splitlines())
    return parse_records(lines[-last:] if last else lines)


class RecordTail:
    """Follows a JSON-lines file the way `tail -F` does: complete lines only, and after a rotation (the path
    now names another file, or the file shrank) the rest of the old file and then the new one from its start."""

    def __init__(self, path: Path, from_start: bool = True):
        self.path, self._fh, self._inode, self._partial = Path(path), None, None, b""
        self._from_start = from_start

    def _open(self) -> bool:
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (held open across polls, closed on rotation)
        except FileNotFoundError:
            return False
        if not self._from_start:
            fh.seek(0, os.SEEK_END)
        self._from_start = True  # a file that appears later (rotation) is read from its start
        self._fh, self._inode, self._partial = fh, os.fstat(fh.fileno()).st_ino, b""
        return True

    def read(self) -> list[bytes]:
        if self._fh is None and not self._open():
            return []
        lines = self._drain()
        try:
            stat = os.stat(self.path)
            rotated = stat.st_ino != self._inode or stat.st_size < self._fh.tell()
        except FileNotFoundError:
            rotated = False  # mid-rotation: keep the old handle until the new file appears
        if rotated:
            self._fh.close()
            self._fh = None
            if self._open():
                lines += self._drain()
        return lines

    def _drain(self) -> list[bytes]:
        data = self._partial + self._fh.read()
        *lines, self._partial = data.split(b"\n")
        return [line for line in lines if line.strip()]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# ---- windows and the persistence rule -------------------------------------------------------------------------

@dataclass
class WindowResult:
    index: int
    records: int
    psi: dict[str, float]
    drifted: list[str]
    model_versions: list[str]


@dataclass
class DriftMonitor:
    """Tumbling windows over records; decides when drift has persisted long enough to call for retraining."""

    reference: DriftReference
    window: int = 500
    threshold: float = 0.2
    persist: int = 2
    on_window: Callable[[WindowResult], None] | None = None
    on_trigger: Callable[[str, WindowResult], None] | None = None
    windows: int = 0
    streak: int = 0
    armed: bool = True
    triggers: list[str] = field(default_factory=list)
    _lines: list = field(default_factory=list)

    def add(self, lines: list[bytes | str]) -> list[WindowResult]:
        self._lines.extend(lines)
        done, start = [], 0
        # Walk by offset and cut the list once: slicing the rest off per window is quadratic on a big backlog.
        while len(self._lines) - start >= self.window:
            done.append(self.close_window(self._lines[start:start + self.window]))
            start += self.window
        del self._lines[:start]
        return done

    @property
    def pending(self) -> int:
        return len(self._lines)

    def close_window(self, lines: list[bytes | str]) -> WindowResult:
        features, versions = parse_records(lines)
        psi = window_psi(self.reference, features) if len(features) else {f: 0.0 for f in FEATURES}
        drifted = sorted((f for f, v in psi.items() if v > self.threshold), key=lambda f: -psi[f])
        result = WindowResult(self.windows, len(features), psi, drifted, sorted(set(versions)))
        self.windows += 1
        self.streak = self.streak + 1 if drifted else 0
        if not drifted:
            self.armed = True  # a clean window re-arms the trigger
        if self.on_window:
            self.on_window(result)
        if drifted and self.streak >= self.persist and self.armed:
            self.armed = False
            reason = self.reason(result)
            self.triggers.append(reason)
            if self.on_trigger:
                self.on_trigger(reason, result)
        return result

    def reason(self, result: WindowResult) -> str:
        parts = ", ".join(f"{f} PSI {result.psi[f]:.2f}" for f in result.drifted)
        version = f" (model {','.join(result.model_versions)})" if result.model_versions else ""
        return f"drift: {parts} > {self.threshold:g} for {self.streak} window(s) of {self.window}{version}"


def post_webhook(url: str, payload: dict, token_file: str = "", timeout: float = 10.0) -> int:
    headers = {"Content-Type": "application/json"}
    if token_file:
        headers["Authorization"] = f"Bearer {Path(token_file).read_text().strip()}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


# ---- the reference that travels with the model ----------------------------------------------------------------

def reference_from_pyfunc(folder: Path) -> Path:
    import yaml

    mlmodel = yaml.safe_load((Path(folder) / "MLmodel").read_text())
    relative = mlmodel["flavors"]["python_function"]["artifacts"]["drift_reference"]["path"]
    return Path(folder) / relative


def load_reference(args: argparse.Namespace, settings: CommonSettings) -> DriftReference:
    if args.reference:
        return DriftReference.read(args.reference)
    if args.model_dir:
        return DriftReference.read(reference_from_pyfunc(args.model_dir))
    import mlflow

    from sentimentops.steps.core.tracking import configure

    configure(settings)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=args.model_uri,
                                                      dst_path=str(settings.home / "drift-cache")))
    return DriftReference.read(reference_from_pyfunc(folder))


# ---- watch ------------------------------------------------------------------------------------------------------

def serve_metrics(settings: DriftSettings):
    """The monitor's own registry and /metrics server; returns (gauges, server, port)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    registry = CollectorRegistry()
    gauges = {
        "psi": Gauge("sentiment_drift_psi", "PSI of the last full window against the model's reference",
                     ["feature"], registry=registry),
        "records": Gauge("sentiment_drift_window_records", "Records in the current (filling) window",
                         registry=registry),
        "windows": Counter("sentiment_drift_windows", "Windows evaluated", registry=registry),
        "triggers": Counter("sentiment_drift_triggers", "Retraining webhook calls by outcome", ["outcome"],
                            registry=registry),
    }
    server, _thread = start_http_server(settings.port, addr=settings.host, registry=registry)
    return gauges, server, server.server_address[1]


def iterate(tail: RecordTail, poll: float, stop: Callable[[], bool]) -> Iterator[list[bytes]]:
    while not stop():
        yield tail.read()
        time.sleep(poll)


def watch(args: argparse.Namespace, settings: DriftSettings) -> int:
    reference = load_reference(args, settings)
    gauges, server, port = serve_metrics(settings)
    print(f"drift watch: {args.records}, windows of {settings.window}, threshold {settings.threshold}, "
          f"persist {settings.persist}; metrics on http://{settings.host}:{port}/metrics", flush=True)

    def on_window(result: WindowResult) -> None:
        for feature, value in result.psi.items():
            gauges["psi"].labels(feature=feature).set(value)
        gauges["windows"].inc()
        print(json.dumps({"window": result.index, "records": result.records,
                          "psi": {k: round(v, 4) for k, v in result.psi.items()}, "drifted": result.drifted}),
              flush=True)

    def on_trigger(reason: str, result: WindowResult) -> None:
        print(f"drift watch: {reason}", flush=True)
        if not settings.webhook_url:
            gauges["triggers"].labels(outcome="no_webhook").inc()
            return
        payload = {"reason": reason, "psi": result.psi, "window": result.index, "records": result.records,
                   "model_versions": result.model_versions}
        try:
            status = post_webhook(settings.webhook_url, payload, settings.webhook_token_file)
            gauges["triggers"].labels(outcome="sent").inc()
            print(f"drift watch: webhook answered {status}", flush=True)
        except OSError as err:  # the monitor keeps watching; the DataDrift alert still fires through Prometheus
            gauges["triggers"].labels(outcome="failed").inc()
            print(f"drift watch: webhook failed: {err}", file=sys.stderr, flush=True)

    monitor = DriftMonitor(reference, settings.window, settings.threshold, settings.persist, on_window, on_trigger)
    tail = RecordTail(args.records, from_start=not args.from_end)
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None

    def stop() -> bool:
        return ((args.max_windows and monitor.windows >= args.max_windows)
                or (deadline is not None and time.monotonic() > deadline))

    try:
        for lines in iterate(tail, settings.poll_seconds, stop):
            monitor.add(lines)
            gauges["records"].set(monitor.pending)
    except KeyboardInterrupt:
        pass
    finally:
        tail.close()
        server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops drift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="online PSI on /metrics; calls the retraining webhook on persistent drift")
    r = sub.add_parser("report", help="Evidently PSI report (HTML) of recent records, logged to MLflow")
    for p in (w, r):
        p.add_argument("--records", type=Path, required=True, help="prediction records (JSON lines)")
        ref = p.add_mutually_exclusive_group(required=True)
        ref.add_argument("--reference", type=Path, help="a drift_reference.json")
        ref.add_argument("--model-dir", type=Path, help="a registered pyfunc folder (MLmodel + artifacts)")
        ref.add_argument("--model-uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    for name in ("host", "port", "window", "threshold", "persist", "webhook-url", "webhook-token-file",
                 "poll-seconds"):
        w.add_argument(f"--{name}", type={"port": int, "window": int, "persist": int, "threshold": float,
                                          "poll-seconds": float}.get(name, str))
    w.add_argument("--from-end", action="store_true", help="skip the records already in the file")
    w.add_argument("--max-windows", type=int, default=0, help="stop after N windows (tests, demos)")
    w.add_argument("--max-seconds", type=float, default=0, help="stop after S seconds (tests, demos)")
    r.add_argument("--last", type=int, default=0, help="only the last N records (0: all)")
    r.add_argument("--window", type=int, help="the window size, for the online PSI beside Evidently's")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--no-mlflow", action="store_true", help="write the report without logging it")
    hook = sub.add_parser("webhook", help="local retraining webhook: starts the local runner with -p reason=...")
    from sentimentops.steps.drift.webhook import add_arguments, serve

    add_arguments(hook)
    args = parser.parse_args(argv)
    if args.command == "webhook":
        return serve(args)
    keys = ("host", "port", "window", "threshold", "persist", "webhook_url", "webhook_token_file", "poll_seconds")
    settings = load_settings(DriftSettings, {k: v for k, v in flags(args).items() if k in keys})
    if args.command == "watch":
        return watch(args, settings)
    from sentimentops.steps.drift.report import report

    return report(args, settings, load_reference(args, settings))


if __name__ == "__main__":
    sys.exit(main())
