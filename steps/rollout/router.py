"""The local stand-in for KServe's traffic split: a tiny weighted reverse proxy on 127.0.0.1.

Each request goes to the canary with probability canary_percent/100 (a seeded RNG), otherwise to stable. The
routes live in the local target's state file (`routes`), re-read whenever the file changes, so the controller
switches traffic with one atomic file replace and the router survives the controller's crash.

Two more jobs for the canary's quality checks (steps/rollout/policy.py):
- mirroring: with `mirror_percent` > 0, that share of predict requests (V1 `:predict`, `/predict`, V2 `infer`) is
  also sent, in the background, to the other deployment; the client's answer is the chosen deployment's alone and
  never waits for the copy. The two answers' labels are compared instance by instance and counted in
  `sentiment_mirror_total{stable, canary, agree}` (the two model versions), on the router's own
  GET /_router/metrics, which the local Prometheus scrapes. A copy that fails, times out or cannot be compared is
  counted in `sentiment_mirror_skipped_total{reason}` and in no agreement.
- feedback routing: POST /v1/feedback with an `id` goes to the deployment that answered that request (the router
  remembers the last MAX_REQUEST_IDS request ids it passed, from the answer's X-Request-Id), because only that
  predictor captured it and knows what it predicted; an id the router does not remember goes to stable. Feedback
  with a `text` goes where the split sends it, like a predict request, so each version's labels are a random sample
  of the same traffic and each label is stored once.

    python -m sentimentops.steps.rollout.router --port 18100 --state .sentimentops/rollout/local/state.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from aiohttp import ClientConnectorError, ClientError, ClientResponse, ClientSession, ClientTimeout, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from sentimentops.steps.core.errors import UsageError, stage_main
from sentimentops.steps.core.production import MIRROR_HEADER, REQUEST_ID_HEADER
from sentimentops.steps.rollout.analysis import MIRROR_METRIC

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
PREDICT_PATH = re.compile(r"/v1/models/[^/]+:predict|/predict|/v2/models/[^/]+/infer")
FEEDBACK_PATH = "/v1/feedback"
MAX_REQUEST_IDS = 100_000  # ~10 MB of ids and URLs: hours of local traffic at the demo's 20 requests/s
MAX_MIRRORS_IN_FLIGHT = 32  # a slow deployment must not pile up copies: beyond this, copies are skipped
MIRROR_TIMEOUT_S = 30.0


class Routes:
    def __init__(self, state_file: Path, seed: int):
        # Two generators: turning mirroring on does not change which requests the split sends to the canary.
        self.state_file, self.rng, self.mirror_rng = state_file, random.Random(seed), random.Random(seed + 1)
        self.mtime: float | None = None
        self.stable: str | None = None
        self.canary: str | None = None
        self.stable_version = self.canary_version = ""
        self.percent = 0
        self.mirror_percent = 0

    def refresh(self, force: bool = False) -> bool:
        """Re-reads the routes when the file changed (or always: `force`, after a backend failed, in case the
        change fell within the file time's resolution); True when it did."""
        try:
            mtime = os.stat(self.state_file).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self.mtime and not force:
            return False
        try:
            routes = json.loads(self.state_file.read_text()).get("routes") or {}
        except (OSError, ValueError):
            return False  # keep the last good routes; the writer replaces the file atomically anyway
        self.mtime = mtime
        self.stable, self.canary = routes.get("stable"), routes.get("canary")
        self.stable_version = str(routes.get("stable_version") or "")
        self.canary_version = str(routes.get("canary_version") or "")
        self.percent = int(routes.get("canary_percent") or 0) if self.canary else 0
        self.mirror_percent = int(routes.get("mirror_percent") or 0) if self.canary and self.stable else 0
        return True

    def pick(self) -> tuple[str, str | None]:
        self.refresh()
        if self.canary and self.rng.random() * 100 < self.percent:
            return "canary", self.canary
        return "stable", self.stable

    def mirror(self) -> bool:
        """Whether this request is also sent to the other deployment (call after pick: the routes are fresh)."""
        return self.mirror_percent > 0 and self.mirror_rng.random() * 100 < self.mirror_percent


class RequestIds:
    """Which backend answered each recent request id: a bounded map, oldest forgotten first."""

    def __init__(self, limit: int = MAX_REQUEST_IDS):
        self.limit, self.seen = limit, OrderedDict[str, str]()

    def remember(self, request_id: str, backend: str) -> None:
        self.seen[request_id] = backend
        self.seen.move_to_end(request_id)
        while len(self.seen) > self.limit:
            self.seen.popitem(last=False)

    def backend(self, feedback_id: str) -> str | None:
        """The backend of a feedback id: a request id, or a capture id `<request id>/<instance>`."""
        found = self.seen.get(feedback_id)
        if found is None and "/" in feedback_id:
            found = self.seen.get(feedback_id.rsplit("/", 1)[0])
        return found


@dataclass
class Metrics:
    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.mirrored = Counter(MIRROR_METRIC, "Mirrored instances whose canary and stable labels were compared.",
                                ["stable", "canary", "agree"], registry=r)
        self.skipped = Counter("sentiment_mirror_skipped", "Mirrored requests not compared, by reason.", ["reason"],
                               registry=r)
        self.feedback = Counter("sentiment_router_feedback", "Feedback requests routed, by how the backend was "
                                "chosen.", ["by"], registry=r)
        for reason in ("busy", "error", "uncomparable"):
            self.skipped.labels(reason)
        for by in ("id", "unknown_id", "text"):
            self.feedback.labels(by)

    def versions(self, stable: str, canary: str) -> None:
        """Zero series for a new pair of versions: Prometheus' increase() misses a counter's first count when the
        series starts above zero, so the series exist before any comparison is made."""
        if stable and canary:
            for agree in ("true", "false"):
                self.mirrored.labels(stable, canary, agree)


def answer_labels(payload: bytes) -> list[str] | None:
    """The labels of a predict answer, one per instance (V1 `predictions[].label`, V2 the `label` output);
    None when the answer holds none (an error, or a V2 request that asked for the probability only)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    labels = None
    if isinstance(body, dict) and isinstance(body.get("predictions"), list):
        labels = [p.get("label") if isinstance(p, dict) else None for p in body["predictions"]]
    elif isinstance(body, dict) and isinstance(body.get("outputs"), list):
        tensor = next((o for o in body["outputs"] if isinstance(o, dict) and o.get("name") == "label"), None)
        labels = tensor.get("data") if isinstance(tensor, dict) else None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return None
    return labels


def feedback_id(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    value = payload.get("id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def make_app(state_file: Path, seed: int = 0, *, max_request_ids: int = MAX_REQUEST_IDS) -> web.Application:
    routes = Routes(state_file, seed)
    ids = RequestIds(max_request_ids)
    metrics = Metrics(CollectorRegistry())
    mirrors: set[asyncio.Task] = set()
    app = web.Application(client_max_size=8 * 1024 * 1024)

    def refresh(force: bool = False) -> None:
        if routes.refresh(force):
            metrics.versions(routes.stable_version, routes.canary_version)

    async def session_ctx(app: web.Application):
        app["session"] = ClientSession(timeout=ClientTimeout(total=60))
        yield
        for task in list(mirrors):
            task.cancel()
        await asyncio.gather(*mirrors, return_exceptions=True)
        await app["session"].close()

    app.cleanup_ctx.append(session_ctx)

    async def health(request: web.Request) -> web.Response:
        refresh()
        return web.json_response({"stable": routes.stable, "canary": routes.canary, "percent": routes.percent,
                                  "mirror_percent": routes.mirror_percent, "mirrors_in_flight": len(mirrors)})

    async def metrics_page(request: web.Request) -> web.Response:
        refresh()
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def compare(url: str, path: str, headers: dict[str, str], body: bytes, labels: list[str],
                      versions: tuple[str, str], served_by_canary: bool) -> None:
        """The copy to the other deployment, and the comparison of its labels with the client's answer's."""
        try:
            async with app["session"].post(url + path, headers=headers, data=body,
                                              timeout=ClientTimeout(total=MIRROR_TIMEOUT_S)) as answer:
                other = answer_labels(await answer.read()) if answer.status == 200 else None
        except (OSError, ClientError):  # TimeoutError is an OSError
            metrics.skipped.labels("error").inc()
            return
        if other is None or len(other) != len(labels):
            metrics.skipped.labels("uncomparable" if other is not None else "error").inc()
            return
        canary, stable = (labels, other) if served_by_canary else (other, labels)
        agreed = sum(c == s for c, s in zip(canary, stable, strict=True))
        if agreed:
            metrics.mirrored.labels(*versions, "true").inc(agreed)
        if len(labels) - agreed:
            metrics.mirrored.labels(*versions, "false").inc(len(labels) - agreed)

    def mirror(role: str, path: str, headers: dict[str, str], body: bytes, payload: bytes) -> None:
        versions = (routes.stable_version, routes.canary_version)
        other = routes.stable if role == "canary" else routes.canary
        labels = answer_labels(payload)
        if other is None or not all(versions):
            return
        if labels is None:
            metrics.skipped.labels("uncomparable").inc()
            return
        if len(mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            metrics.skipped.labels("busy").inc()
            return
        copy = {k: v for k, v in headers.items() if k.lower() != REQUEST_ID_HEADER.lower()} | {MIRROR_HEADER: "1"}
        task = asyncio.get_running_loop().create_task(
            compare(other, path, copy, body, labels, versions, role == "canary"))
        mirrors.add(task)
        task.add_done_callback(mirrors.discard)

    def feedback_backend(body: bytes) -> tuple[str, str | None]:
        wanted = feedback_id(body)
        if wanted is not None:
            known = ids.backend(wanted)
            metrics.feedback.labels("id" if known else "unknown_id").inc()
            if known is not None:
                return ("canary" if known == routes.canary else "stable" if known == routes.stable
                        else "retired"), known
            return "stable", routes.stable
        metrics.feedback.labels("text").inc()
        return routes.pick()

    async def proxy(request: web.Request) -> web.Response:
        body = await request.read()
        path = request.rel_url.path
        predict = request.method == "POST" and PREDICT_PATH.fullmatch(path) is not None
        refresh()
        if request.method == "POST" and path == FEEDBACK_PATH:
            role, backend = feedback_backend(body)
        else:
            role, backend = routes.pick()
        if backend is None:
            return web.json_response({"error": "no backend configured"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}

        async def forward(url: str) -> tuple[bytes, dict[str, str], ClientResponse]:
            async with request.app["session"].request(request.method, url + request.rel_url.raw_path_qs,
                                                      headers=headers, data=body) as answer:
                return await answer.read(), {k: v for k, v in answer.headers.items()
                                             if k.lower() not in HOP_HEADERS}, answer

        def moved() -> tuple[str, str | None] | None:
            """Where the routes send this request now, if they no longer name the backend it went to: a promotion
            or rollback rewrites the routes before it stops the process it retires. Not for a label by an id the
            router saw answered: it belongs to the deployment that answered (an unknown id goes to stable anyway)."""
            refresh(force=True)
            wanted = feedback_id(body) if path == FEEDBACK_PATH else None
            if backend in (routes.stable, routes.canary) or (wanted is not None and ids.backend(wanted) is not None):
                return None
            again = routes.pick()
            return again if again[1] is not None else None

        try:
            try:
                payload, out, answer = await forward(backend)
            except ClientConnectorError:  # refused before anything was sent: safe to send elsewhere
                if (again := moved()) is None:
                    raise
                role, backend = again
                payload, out, answer = await forward(backend)
            else:
                # a retiring predictor drains: it refuses new requests with 503 before reading them
                if answer.status == 503 and (again := moved()) is not None:
                    role, backend = again
                    payload, out, answer = await forward(backend)
        except (OSError, ClientError) as err:  # the backend is gone (a rollback in progress): the router's own 502
            gone = " (the deployment that answered this request id is gone)" if role == "retired" else ""
            return web.json_response({"error": f"{role} unreachable{gone}: {err}"}, status=502,
                                     headers={"x-sentimentops-backend": role})
        out["x-sentimentops-backend"] = role
        if predict and answer.status == 200:
            request_id = answer.headers.get(REQUEST_ID_HEADER)
            if request_id:
                ids.remember(request_id, backend)
            if routes.mirror():
                mirror(role, request.rel_url.raw_path_qs, headers, body, payload)
        return web.Response(status=answer.status, body=payload, headers=out)

    app.router.add_get("/_router/health", health)
    app.router.add_get("/_router/metrics", metrics_page)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


@stage_main("rollout-router")
def main(argv: list[str] | None = None) -> int:
    """The router process (started by the local target, steps/rollout/local.py): its arguments are not settings."""
    parser = argparse.ArgumentParser(prog="python -m sentimentops.steps.rollout.router",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--state", type=Path, required=True, help="the local target's state file (its routes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the canary split (default: 0)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    web.run_app(make_app(args.state, args.seed), host="127.0.0.1", port=args.port, print=None,
                access_log=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
