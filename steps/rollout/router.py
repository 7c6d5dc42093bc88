"""The local stand-in for KServe's traffic split: a tiny weighted reverse proxy on 127.0.0.1.

Each request goes to the canary with probability canary_percent/100 (a seeded RNG), otherwise to stable. The
routes live in the local target's state file (`routes`), re-read whenever the file changes, so the controller
switches traffic with one atomic file replace and the router survives the controller's crash.

    python -m sentimentops.steps.rollout.router --port 18100 --state .sentimentops/rollout/local/state.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, web

from sentimentops.steps.core.errors import UsageError, stage_main

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


class Routes:
    def __init__(self, state_file: Path, seed: int):
        self.state_file, self.rng = state_file, random.Random(seed)
        self.mtime: float | None = None
        self.stable: str | None = None
        self.canary: str | None = None
        self.percent = 0

    def refresh(self) -> None:
        try:
            mtime = os.stat(self.state_file).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.mtime:
            return
        try:
            routes = json.loads(self.state_file.read_text()).get("routes") or {}
        except (OSError, ValueError):
            return  # keep the last good routes; the writer replaces the file atomically anyway
        self.mtime = mtime
        self.stable, self.canary = routes.get("stable"), routes.get("canary")
        self.percent = int(routes.get("canary_percent") or 0) if self.canary else 0

    def pick(self) -> tuple[str, str | None]:
        self.refresh()
        if self.canary and self.rng.random() * 100 < self.percent:
            return "canary", self.canary
        return "stable", self.stable


def make_app(state_file: Path, seed: int = 0) -> web.Application:
    routes = Routes(state_file, seed)
    app = web.Application(client_max_size=8 * 1024 * 1024)

    async def session_ctx(app: web.Application):
        app["session"] = ClientSession(timeout=ClientTimeout(total=60))
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session_ctx)

    async def health(request: web.Request) -> web.Response:
        routes.refresh()
        return web.json_response({"stable": routes.stable, "canary": routes.canary, "percent": routes.percent})

    async def proxy(request: web.Request) -> web.Response:
        role, backend = routes.pick()
        if backend is None:
            return web.json_response({"error": "no backend configured"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        try:
            async with request.app["session"].request(request.method, backend + request.rel_url.raw_path_qs,
                                                      headers=headers, data=body) as answer:
                payload = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
                out["x-sentimentops-backend"] = role
                return web.Response(status=answer.status, body=payload, headers=out)
        except OSError as err:  # the backend is gone (a rollback in progress): the router's own 502
            return web.json_response({"error": f"{role} unreachable: {err}"}, status=502,
                                     headers={"x-sentimentops-backend": role})

    app.router.add_get("/_router/health", health)
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
