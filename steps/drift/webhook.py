"""`sentimentops drift webhook`: the local stand-in for the Argo Events webhook EventSource + Sensor.

POST /retrain with `{"reason": "..."}` (what `drift watch` sends) or an Alertmanager webhook body (what the
DataDrift route sends) starts the local runner on the rendered training template with `-p reason=<reason>`, in a
new run folder under `--run-root`: the same parameter the Sensor passes in the cluster, so the reason reaches
MLflow through SENTIMENTOPS_RUN_REASON. Like the template's mutex, one retrain at a time: a POST while one runs
is answered 409 and starts nothing. GET /runs lists the runs started so far. Listens on 127.0.0.1 only.

The retrain runs in its own process group; when the webhook stops (SIGTERM, Ctrl-C, --max-seconds) it stops the
running retrain's whole group (runner and step), so nothing outlives it. The run folder keeps what finished: the
same command resumes it (finished steps are reused, train resumes from its checkpoint).
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sentimentops.steps.core.errors import UsageError
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.processes import spawn, stop

log = get_logger(__name__)

MAX_REASON = 200  # an Argo parameter and an MLflow tag value: short, one line


def reason_from_body(body: object) -> str | None:
    """`{"reason": ...}` from the drift monitor, or an Alertmanager notification (firing alerts' summaries)."""
    if not isinstance(body, dict):
        return None
    reason = body.get("reason")
    if not reason and isinstance(body.get("alerts"), list):
        firing = [a for a in body["alerts"] if isinstance(a, dict) and a.get("status", "firing") == "firing"]
        parts = [(a.get("annotations") or {}).get("summary") or (a.get("labels") or {}).get("alertname", "")
                 for a in firing]
        reason = "drift: " + "; ".join(p for p in parts if p) if any(parts) else None
    if not isinstance(reason, str) or not reason.strip():
        return None
    return re.sub(r"\s+", " ", reason).strip()[:MAX_REASON]


class Launcher:
    """Starts one pipeline run at a time as a subprocess of this server."""

    def __init__(self, run_root: Path, params: list[str], env: list[str], template: Path | None):
        self.run_root, self.params, self.env, self.template = run_root, params, env, template
        self.lock = threading.Lock()
        self.current: subprocess.Popen | None = None
        self.runs: list[dict] = []

    def busy(self) -> bool:
        return self.current is not None and self.current.poll() is None

    def start(self, reason: str) -> dict | None:
        with self.lock:
            if self.busy():
                return None
            run_dir = self.run_root / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{len(self.runs) + 1}"
            argv = [sys.executable, "-m", "sentimentops.steps.cli", "pipeline", "run", "--run-dir", str(run_dir)]
            argv += ["--template", str(self.template)] if self.template else []
            for item in self.params:
                argv += ["-p", item]
            argv += ["-p", f"reason={reason}"]
            for item in self.env:
                argv += ["--env", item]
            run_dir.mkdir(parents=True, exist_ok=True)
            output = open(run_dir / "webhook-run.log", "w")  # noqa: SIM115 (the child owns it until it exits)
            self.current = spawn(argv, stdout=output, stderr=subprocess.STDOUT)
            output.close()
            record = {"run_dir": str(run_dir), "reason": reason, "pid": self.current.pid}
            self.runs.append(record)
            log.info("drift webhook: started %s (reason: %s)", run_dir, reason)
            return record

    def stop(self) -> None:
        """Stop the running retrain's process group (SIGTERM, SIGKILL after a grace period)."""
        with self.lock:
            current = self.current
            if current is not None and current.poll() is None:
                log.info("drift webhook: stopping the running retrain (pid %s)", current.pid)
                stop(current, grace_s=20)

    def status(self) -> list[dict]:
        out = []
        for run in self.runs:
            code = self.current.poll() if self.current and self.current.pid == run["pid"] else "done"
            out.append(run | {"running": code is None})
        return out


def handler(launcher: Launcher, path: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            if self.path.rstrip("/") != path:
                return self._answer(404, {"error": f"POST {path}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
            except json.JSONDecodeError:
                return self._answer(400, {"error": "body is not JSON"})
            reason = reason_from_body(body)
            if reason is None:
                return self._answer(400, {"error": 'expected {"reason": "..."} or an Alertmanager body'})
            started = launcher.start(reason)
            if started is None:
                return self._answer(409, {"status": "busy", "reason": reason})
            return self._answer(202, {"status": "started", **started})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/runs", "/healthz"):
                return self._answer(200, {"runs": launcher.status()})
            return self._answer(404, {"error": "GET /runs"})

        def log_message(self, fmt: str, *args) -> None:
            log.info("drift webhook: %s %s", self.address_string(), fmt % args)

    return Handler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=12000, help="port on 127.0.0.1 (12000 like the EventSource)")
    parser.add_argument("--path", default="/retrain", help="endpoint (the EventSource's)")
    parser.add_argument("--run-root", type=Path, required=True, help="folder for the run folders it starts")
    parser.add_argument("--template", type=Path, help="rendered template (default: the training template)")
    parser.add_argument("-p", "--parameter", dest="parameters", action="append", default=[], metavar="KEY=VALUE",
                        help="workflow parameter for every run it starts (reason is set from the request)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VAL", help="extra task environment")
    parser.add_argument("--max-seconds", type=float, default=0, help="stop after S seconds (tests, demos)")


def serve(args: argparse.Namespace) -> int:
    """Runs under `sentimentops drift` (stage_main): a bad argument exits 2 in one line, a taken port 3."""
    bad = [item for item in [*args.parameters, *args.env] if "=" not in item]
    if bad:
        raise UsageError(f"expected KEY=VALUE, got {bad[0]!r} (-p/--parameter, --env)")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.template is not None and not args.template.is_file():
        raise UsageError(f"--template {args.template}: no such file")
    launcher = Launcher(args.run_root, args.parameters, args.env, args.template)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(launcher, args.path.rstrip("/")))
    log.info("drift webhook: POST http://127.0.0.1:%d%s", server.server_address[1], args.path)
    # shutdown() waits for serve_forever() to return, so it is called from another thread (never the handler's)
    def shut_down(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, server.shutdown)
        timer.daemon = True
        timer.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        launcher.stop()
    return 0
