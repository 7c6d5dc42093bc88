"""`sentimentops drift watch|report|webhook`: the drift monitor.

  watch    tails the predictor's prediction records (JSON lines, no raw text; docs/metrics.md), cuts them into
           tumbling windows of `--window` records or `--window-seconds`, whichever comes first, judged only on at
           least `--min-window` records (sentimentops.steps.drift.windows), computes the cheap online PSI per
           feature against the model's reference (sentimentops.steps.core.psi) and exports it on its own /metrics as
           `sentiment_drift_psi{feature=...}`. With `--webhook-url` (local use: `drift webhook`), when a window
           drifts (PSI > threshold on any feature) for `--persist` windows in a row it POSTs the reason once, and
           re-arms only after a clean window. In the cluster the predictor pods' sidecars export PSI only: the one
           retrain caller there is Alertmanager's DataDrift route (a webhook per pod would queue one retrain per
           replica for one drift episode).
  report   Evidently's PSI report of the recent records against the reference sample (HTML + JSON), logged to
           MLflow (sentimentops.steps.drift.report).
  webhook  a local stand-in for the Argo Events webhook: starts the local runner on the training template with
           `-p reason=...` (sentimentops.steps.drift.webhook).

The reference comes with the model: `--reference FILE` (in a predictor pod: `<dir>/drift_reference.json`, which the
predictor started with `--prediction-log <dir>/records.jsonl` publishes when its model loads; `watch` waits for it,
bounded by `--reference-wait`), `--model-dir DIR` (a registered pyfunc folder: MLmodel names the `drift_reference`
artifact) or `--model-uri models:/sentiment@champion`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, add_settings_flags, settings_from_args
from sentimentops.steps.core.contract import read_model_folder
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.psi import DriftReference
from sentimentops.steps.drift.records import RecordTail
from sentimentops.steps.drift.windows import (
    MIN_WINDOW,
    OUTCOMES,
    WINDOW,
    WINDOW_SECONDS,
    DriftMonitor,
    WindowResult,
)

log = get_logger(__name__)


class DriftSettings(CommonSettings):
    section: ClassVar[str] = "drift"
    host: str = Field("127.0.0.1", description="Address of the monitor's /metrics (0.0.0.0 in a sidecar).")
    port: int = Field(9108, ge=0, le=65535, description="Port of the monitor's /metrics (0: any free port).")
    window: int = Field(WINDOW, ge=20, description="Records per window: a full window closes at once; sampling "
                        "noise in PSI ~ (bins-1)/window.")
    window_seconds: float = Field(WINDOW_SECONDS, ge=0, description="A window also closes this many seconds after "
                                  "its first record, if it holds --min-window records (else at its min-window-th "
                                  "record); 0: by count only.")
    min_window: int = Field(MIN_WINDOW, ge=20, description="Records a window needs before its PSI is trusted (no "
                            "false alarm in 2,000 reference windows of 200; 11% over 0.2 at 100); above "
                            "--window it is --window.")
    threshold: float = Field(0.2, gt=0, description="PSI above which a feature has drifted (the DataDrift alert).")
    persist: int = Field(2, ge=1, description="Drifted windows in a row before the retraining webhook is called.")
    webhook_url: str = Field("", description="Retraining webhook (POST JSON {reason, psi, ...}); empty: none.")
    webhook_token_file: str = Field("", description="File with the webhook's bearer token (the EventSource's "
                                    "authSecret); empty: no Authorization header.")
    poll_seconds: float = Field(1.0, gt=0, description="How often the records file is read for new lines.")
    reference_wait: float = Field(0.0, ge=0, description="Seconds `watch --reference FILE` waits for the file to "
                                  "appear (the predictor publishes it next to its records when its model loads); "
                                  "then exit 1. 0: no wait (a missing file is an error at once); gke profile: 900.")


def post_webhook(url: str, payload: dict, token_file: str = "", timeout: float = 10.0) -> int:
    headers = {"Content-Type": "application/json"}
    if token_file:
        headers["Authorization"] = f"Bearer {Path(token_file).read_text().strip()}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status


# ---- the reference that travels with the model ----------------------------------------------------------------

def reference_from_pyfunc(folder: Path) -> Path:
    """The `drift_reference` artifact of a registered model folder (core.contract.read_model_folder)."""
    found = read_model_folder(Path(folder)).drift_reference
    if found is None:
        raise FileNotFoundError(f"{folder}: the model has no drift_reference artifact (registered without evaluate?)")
    return found


def wait_for_reference(path: Path, timeout_s: float, *, poll_s: float = 1.0, say_every_s: float = 30.0,
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic) -> bool:
    """Waits (bounded) for `path` to exist, logging while it waits; True once it does. In a predictor pod the
    monitor starts with the predictor, before the model is loaded and the reference published: it waits for it
    instead of exiting and being restarted in a loop."""
    start = clock()
    said = start
    while not path.is_file():
        now = clock()
        if now - start >= timeout_s:
            return False
        if now == start or now - said >= say_every_s:
            said = now
            log.info("drift watch: waiting for the drift reference %s (the predictor writes it when its model "
                     "has loaded; %.0f of %.0f s)", path, now - start, timeout_s)
        sleep(min(poll_s, max(0.0, timeout_s - (now - start))) or poll_s)
    return True


def load_reference(args: argparse.Namespace, settings: CommonSettings) -> DriftReference:
    """The reference from --reference, --model-dir or --model-uri; an unreadable one is a DataError (exit 1)."""
    if args.reference or args.model_dir:
        try:
            if args.reference:
                return DriftReference.read(args.reference)
            return DriftReference.read(reference_from_pyfunc(args.model_dir))
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read the drift reference: {err}") from err
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
        "psi": Gauge("sentiment_drift_psi", "PSI of the last judged window against the model's reference",
                     ["feature"], registry=registry),
        "records": Gauge("sentiment_drift_window_records", "Records in the current (filling) window",
                         registry=registry),
        "last_records": Gauge("sentiment_drift_last_window_records", "Records in the last closed window",
                              registry=registry),
        "last_seconds": Gauge("sentiment_drift_last_window_seconds", "Seconds from the last closed window's "
                              "first record to its close", registry=registry),
        "windows": Counter("sentiment_drift_windows", "Windows closed, by outcome (judged; too_few: fewer than "
                           "--min-window valid records, PSI not trusted)", ["outcome"], registry=registry),
        "extended": Counter("sentiment_drift_windows_extended", "Windows whose --window-seconds ran out before "
                            "they held --min-window records (kept open until they do)", registry=registry),
        "triggers": Counter("sentiment_drift_triggers", "Retraining webhook calls by outcome", ["outcome"],
                            registry=registry),
    }
    for outcome in OUTCOMES:  # both series exist from the start: a rate over them is never "no data"
        gauges["windows"].labels(outcome=outcome)
    server, _thread = start_http_server(settings.port, addr=settings.host, registry=registry)
    return gauges, server, server.server_address[1]


def iterate(tail: RecordTail, poll: float, stop: Callable[[], bool]) -> Iterator[list[bytes]]:
    while not stop():
        yield tail.read()
        time.sleep(poll)


def watch(args: argparse.Namespace, settings: DriftSettings) -> int:
    gauges, server, port = serve_metrics(settings)  # up at once: the scrape target is there while it waits
    try:
        if args.reference and not wait_for_reference(args.reference, settings.reference_wait,
                                                     poll_s=settings.poll_seconds):
            waited = (f"did not appear within {settings.reference_wait:.0f} s" if settings.reference_wait
                      else "does not exist (--reference-wait S waits for it)")
            raise DataError(f"drift reference {args.reference} {waited}: is the predictor beside this monitor "
                            "running with --prediction-log in the same folder, and does its model carry a "
                            "drift_reference artifact?")
        reference = load_reference(args, settings)
    except BaseException:
        server.shutdown()
        raise
    log.info("drift watch: %s, windows of %d records or %g s (judged from %d records; 0 s: by count only), "
             "threshold %s, persist %d; metrics on http://%s:%d/metrics", args.records, settings.window,
             settings.window_seconds, min(settings.min_window, settings.window), settings.threshold,
             settings.persist, settings.host, port)

    def on_window(result: WindowResult) -> None:
        gauges["windows"].labels(outcome=result.outcome).inc()
        gauges["last_records"].set(result.records)
        gauges["last_seconds"].set(result.seconds)
        line = {"window": result.index, "records": result.records, "closed_by": result.closed_by,
                "seconds": round(result.seconds, 1), "outcome": result.outcome}
        if result.judged:
            for feature, value in result.psi.items():
                gauges["psi"].labels(feature=feature).set(value)
            line |= {"psi": {k: round(v, 4) for k, v in result.psi.items()}, "drifted": result.drifted}
        else:  # sentiment_drift_psi keeps the last judged window's values: this one is no evidence either way
            log.warning("drift watch: window %d closed with %d valid records, fewer than %d: not judged (lines "
                        "that are not prediction records?)", result.index, result.records, monitor.min_records)
        emit(json.dumps(line))  # one JSON line per window on stdout: the monitor's result stream

    def on_extend(records: int, seconds: float) -> None:
        gauges["extended"].inc()
        log.info("drift watch: the window is %.0f s old with %d records, fewer than %d: it stays open until it "
                 "holds them (slow traffic; --window-seconds, --min-window)", seconds, records, monitor.min_records)

    def on_trigger(reason: str, result: WindowResult) -> None:
        log.warning("drift watch: %s", reason)
        if not settings.webhook_url:
            gauges["triggers"].labels(outcome="no_webhook").inc()
            return
        payload = {"reason": reason, "psi": result.psi, "window": result.index, "records": result.records,
                   "closed_by": result.closed_by, "seconds": round(result.seconds, 1),
                   "model_versions": result.model_versions}
        try:
            status = post_webhook(settings.webhook_url, payload, settings.webhook_token_file)
            gauges["triggers"].labels(outcome="sent").inc()
            log.info("drift watch: webhook answered %s", status)
        except OSError as err:  # the monitor keeps watching; the DataDrift alert still fires through Prometheus
            gauges["triggers"].labels(outcome="failed").inc()
            log.error("drift watch: webhook failed: %s", err)

    monitor = DriftMonitor(reference, settings.window, settings.threshold, settings.persist, on_window, on_trigger,
                           window_seconds=settings.window_seconds, min_window=settings.min_window,
                           on_extend=on_extend, clock=time.monotonic)
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


# Settings `drift report` does not use (it serves nothing and calls no webhook).
REPORT_SKIP = ("host", "port", "persist", "webhook_url", "webhook_token_file", "poll_seconds", "reference_wait",
               "window_seconds")


def parser() -> argparse.ArgumentParser:
    """`sentimentops drift`: each sub-command's own arguments, plus one flag per DriftSettings field (watch, report)."""
    from sentimentops.steps.drift.webhook import add_arguments

    p = argparse.ArgumentParser(prog="sentimentops drift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch", help="online PSI on /metrics; calls the retraining webhook on persistent drift",
                       description="Online PSI per window on /metrics; calls the retraining webhook once drift "
                       "persisted.")
    r = sub.add_parser("report", help="Evidently PSI report (HTML) of recent records, logged to MLflow",
                       description="Evidently's PSI report (HTML + JSON) of recent records, logged to MLflow.")
    for s in (w, r):
        s.add_argument("--records", type=Path, required=True, help="prediction records (JSON lines)")
        ref = s.add_mutually_exclusive_group(required=True)
        ref.add_argument("--reference", type=Path, help="a drift_reference.json")
        ref.add_argument("--model-dir", type=Path, help="a registered pyfunc folder (MLmodel + artifacts)")
        ref.add_argument("--model-uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    w.add_argument("--from-end", action="store_true", help="skip the records already in the file")
    w.add_argument("--max-windows", type=int, default=0, help="stop after N windows (tests, demos)")
    w.add_argument("--max-seconds", type=float, default=0, help="stop after S seconds (tests, demos)")
    r.add_argument("--last", type=int, default=0, help="only the last N records (0: all)")
    r.add_argument("--out", type=Path, required=True, help="output folder: drift_report.html, drift.json")
    r.add_argument("--no-mlflow", action="store_true", help="write the report without logging it")
    add_settings_flags(w, DriftSettings)
    add_settings_flags(r, DriftSettings, skip=REPORT_SKIP)
    hook = sub.add_parser("webhook", help="local retraining webhook: starts the local runner with -p reason=...",
                          description="The local stand-in for the Argo Events webhook (sentimentops.steps.drift."
                          "webhook).")
    add_arguments(hook)
    return p


@stage_main("drift")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "webhook":
        from sentimentops.steps.drift.webhook import serve

        return serve(args)
    skip = REPORT_SKIP if args.command == "report" else ()
    settings = settings_from_args(DriftSettings, args, skip=skip)
    if args.command == "watch":
        return watch(args, settings)
    from sentimentops.steps.drift.report import report

    return report(args, settings, load_reference(args, settings))


if __name__ == "__main__":
    sys.exit(main())
