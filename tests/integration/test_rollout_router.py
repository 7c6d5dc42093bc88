"""The local router's quality jobs (steps/rollout/router.py), the router as its own process on 127.0.0.1 between two
small aiohttp deployments that answer in the predictor's V1/V2 formats with known labels:

- mirroring: every mirrored instance is counted once as agreeing or not, labelled with both versions, whichever
  side served the client; the client's answer never waits for the copy; a copy that fails is counted as skipped;
- feedback routing: an id goes to the deployment that answered that request (also in the capture form
  `<request id>/<instance>`), an unknown id to stable, a text where the split sends it, a malformed body to stable
  (whose 4xx the client gets), and nothing the router does turns into a 5xx of its own.
"""
from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from aiohttp import web

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import spawn, stop, wait_for
from sentimentops.steps.core.production import MIRROR_HEADER, REQUEST_ID_HEADER
from sentimentops.steps.rollout.router import RequestIds, answer_labels


class Deployment:
    """A deployment stand-in: labels "positive" when the text holds "good"; the canary inverts texts holding
    "flip". Records the feedback it receives and the request ids it issued; `hold` blocks mirrored copies."""

    def __init__(self, name: str, invert_flip: bool):
        self.name, self.invert_flip = name, invert_flip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.issued: list[str] = []
        self.feedback: list[dict] = []
        self.mirrored = 0
        self.hold = threading.Event()
        self.hold.set()
        self.draining = False  # like a predictor after SIGTERM: every new request refused with 503
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def label(self, text: str) -> str:
        positive = "good" in text
        if self.invert_flip and "flip" in text:
            positive = not positive
        return "positive" if positive else "negative"

    async def answer(self, request: web.Request, body: dict) -> web.Response:
        if self.draining:
            return web.json_response({"error": "draining"}, status=503)
        if request.headers.get(MIRROR_HEADER):
            self.mirrored += 1
            await asyncio.get_running_loop().run_in_executor(None, self.hold.wait, 30)
        request_id = request.headers.get(REQUEST_ID_HEADER) or f"{self.name}-{uuid.uuid4().hex[:12]}"
        self.issued.append(request_id)
        return web.json_response(body, headers={REQUEST_ID_HEADER: request_id})

    def app(self) -> web.Application:
        async def v1(request: web.Request) -> web.Response:
            texts = (await request.json())["instances"]
            return await self.answer(request, {"predictions": [{"label": self.label(t), "probability": 0.9}
                                                               for t in texts]})

        async def v2(request: web.Request) -> web.Response:
            texts = (await request.json())["inputs"][0]["data"]
            return await self.answer(request, {"model_name": "sentiment", "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [len(texts)], "data": [self.label(t) for t in texts]}]})

        async def feedback(request: web.Request) -> web.Response:
            if self.draining:
                return web.json_response({"error": "draining"}, status=503)
            try:
                body = json.loads(await request.read())
            except ValueError:
                return web.json_response({"error": "invalid JSON"}, status=400)
            self.feedback.append(body)
            return web.json_response({"recorded": True})

        app = web.Application()
        app.router.add_post("/v1/models/{name}:predict", v1)
        app.router.add_post("/predict", v1)
        app.router.add_post("/v2/models/{name}/infer", v2)
        app.router.add_post("/v1/feedback", feedback)
        return app

    def start(self) -> Deployment:
        self.thread.start()

        async def serve():
            self.runner = web.AppRunner(self.app())
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def close(self) -> None:
        self.hold.set()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def write_routes(state: Path, stable: Deployment, canary: Deployment | None, percent: int, mirror: int) -> None:
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"routes": {
        "stable": stable.url, "stable_version": "1", "canary": canary.url if canary else None,
        "canary_version": "2" if canary else None, "canary_percent": percent, "mirror_percent": mirror}}))
    tmp.replace(state)


@pytest.fixture()
def deployments():
    stable, canary = Deployment("stable", False).start(), Deployment("canary", True).start()
    yield stable, canary
    stable.close()
    canary.close()


@pytest.fixture()
def router(tmp_path, deployments):
    """Starts the router process on a routes file the test writes first (`start(percent, mirror)`)."""
    procs = []

    def start(percent: int, mirror: int, canary: bool = True) -> str:
        state = tmp_path / "state.json"
        write_routes(state, deployments[0], deployments[1] if canary else None, percent, mirror)
        port = free_port()
        log = (tmp_path / "router.log").open("ab")
        proc = spawn([sys.executable, "-m", "sentimentops.steps.rollout.router", "--port", str(port), "--state",
                      str(state), "--seed", "3"], stdout=log, stderr=log)
        log.close()
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(url + "/_router/health") is not None, 30, "the router", [proc])
        return url

    yield start
    for proc in procs:
        stop(proc, grace_s=5)


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return None


def post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read())


def mirror_counts(url: str) -> dict[str, float]:
    text = get(url + "/_router/metrics") or ""
    found = re.findall(r'^sentiment_mirror_total\{agree="(\w+)",canary="2",stable="1"\} (\S+)$', text, re.MULTILINE)
    return {agree: float(value) for agree, value in found}


def skipped(url: str, reason: str) -> float:
    match = re.search(rf'^sentiment_mirror_skipped_total\{{reason="{reason}"\}} (\S+)$',
                      get(url + "/_router/metrics") or "", re.MULTILINE)
    return float(match.group(1)) if match else 0.0


TEXTS = ["a good film", "a good film, flip", "a bad film"]  # per request: 2 agree, 1 disagrees


def test_mirrored_instances_are_compared_whichever_side_served(router, deployments):
    url = router(percent=50, mirror=100)
    assert mirror_counts(url) == {"true": 0.0, "false": 0.0}  # the series exist before the first comparison
    served = []
    for i in range(30):
        if i % 3 == 0:
            status, headers, body = post(url + "/v1/models/sentiment:predict", {"instances": TEXTS},
                                         {REQUEST_ID_HEADER: f"client-{i}"})
            labels = [p["label"] for p in body["predictions"]]
        elif i % 3 == 1:
            status, headers, body = post(url + "/predict", {"instances": TEXTS})
            labels = [p["label"] for p in body["predictions"]]
        else:
            status, headers, body = post(url + "/v2/models/sentiment/infer",
                                         {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3],
                                                      "data": TEXTS}]})
            labels = body["outputs"][0]["data"]
        assert status == 200
        role = headers["x-sentimentops-backend"]
        served.append(role)
        # the client gets the answer of the deployment that served it, never the copy's
        assert labels == [deployments[role == "canary"].label(t) for t in TEXTS]
    assert {"stable", "canary"} <= set(served)
    counts = wait_for(lambda: (c := mirror_counts(url)) and sum(c.values()) == 90 and c, 30, "every comparison")
    assert counts == {"true": 60.0, "false": 30.0}
    stable, canary = deployments
    assert stable.mirrored == served.count("canary") and canary.mirrored == served.count("stable")
    # a copy never carries the client's request id: the other deployment makes its own
    issued = stable.issued + canary.issued
    assert len(issued) == 60 and len(set(issued)) == 60
    assert sorted(i for i in issued if i.startswith("client-")) == sorted(f"client-{i}" for i in range(0, 30, 3))


def test_the_clients_answer_never_waits_for_the_copy(router, deployments):
    _stable, canary = deployments
    url = router(percent=0, mirror=100)  # every request served by stable, copied to the canary
    canary.hold.clear()  # the canary's copies hang until released
    status, headers, _ = post(url + "/predict", {"instances": TEXTS})
    assert status == 200 and headers["x-sentimentops-backend"] == "stable"
    assert json.loads(get(url + "/_router/health"))["mirrors_in_flight"] == 1  # the copy is still waiting
    assert sum(mirror_counts(url).values()) == 0
    canary.hold.set()
    wait_for(lambda: mirror_counts(url).get("false") == 1.0, 30, "the released comparison")
    assert mirror_counts(url) == {"true": 2.0, "false": 1.0}


def test_a_failed_copy_is_skipped_not_counted(router, deployments):
    _stable, canary = deployments
    url = router(percent=0, mirror=100)
    canary.close()  # the canary is gone (a rollback in progress)
    status, headers, _ = post(url + "/predict", {"instances": TEXTS})
    assert status == 200 and headers["x-sentimentops-backend"] == "stable"
    wait_for(lambda: skipped(url, "error") == 1.0, 30, "the skipped copy")
    assert sum(mirror_counts(url).values()) == 0
    canary.close = lambda: None  # closed already: the fixture's close has nothing left to do


def test_no_mirroring_without_a_canary_or_below_the_share(router, deployments):
    url = router(percent=0, mirror=100, canary=False)
    for _ in range(5):
        assert post(url + "/predict", {"instances": TEXTS})[0] == 200
    assert deployments[1].mirrored == 0 and mirror_counts(url) == {}


def test_feedback_goes_to_the_deployment_that_answered(router, deployments):
    stable, canary = deployments
    url = router(percent=50, mirror=0)
    answered = {}
    for _ in range(40):
        status, headers, _ = post(url + "/v1/models/sentiment:predict", {"instances": TEXTS})
        assert status == 200
        answered[headers[REQUEST_ID_HEADER.lower()]] = headers["x-sentimentops-backend"]
    assert set(answered.values()) == {"stable", "canary"}
    for i, (request_id, role) in enumerate(answered.items()):
        feedback_id = request_id if i % 2 else f"{request_id}/1"  # the capture id of the request's 2nd instance
        status, headers, _ = post(url + "/v1/feedback", {"id": feedback_id, "label": "positive"})
        assert status == 200 and headers["x-sentimentops-backend"] == role
    got = {d.name: {f["id"].split("/")[0] for f in d.feedback} for d in deployments}
    assert got == {role: {rid for rid, r in answered.items() if r == role} for role in ("stable", "canary")}
    # an id the router never saw: stable (the predictor answers whether it knows it)
    assert post(url + "/v1/feedback", {"id": "never-seen", "label": "negative"})[1]["x-sentimentops-backend"] \
        == "stable"
    assert stable.feedback[-1]["id"] == "never-seen"
    # a text goes where the split sends it: both deployments get a share, each label once
    before = len(stable.feedback) + len(canary.feedback)
    roles = [post(url + "/v1/feedback", {"text": f"review {i}", "label": "positive"})[1]["x-sentimentops-backend"]
             for i in range(60)]
    assert set(roles) == {"stable", "canary"}
    assert len(stable.feedback) + len(canary.feedback) == before + 60
    # a malformed body is the deployment's to refuse (4xx), not the router's to crash on
    status, headers, body = post(url + "/v1/feedback", b"{not json")
    assert status == 400 and "invalid JSON" in body["error"]


def test_feedback_for_a_deployment_that_is_gone_is_a_clear_502(router, deployments):
    _stable, canary = deployments
    url = router(percent=100, mirror=0)
    _, headers, _ = post(url + "/predict", {"instances": TEXTS})
    assert headers["x-sentimentops-backend"] == "canary"
    canary.close()
    canary.close = lambda: None  # closed already: the fixture's close has nothing left to do
    status, _, body = post(url + "/v1/feedback", {"id": headers[REQUEST_ID_HEADER.lower()], "label": "positive"})
    assert status == 502 and "unreachable" in body["error"]


def test_request_ids_are_bounded_and_match_capture_ids():
    ids = RequestIds(limit=3)
    for i in range(5):
        ids.remember(f"r{i}", f"http://b{i}")
    assert ids.backend("r0") is None and ids.backend("r1") is None  # the oldest forgotten first
    assert ids.backend("r4") == "http://b4" and ids.backend("r4/2") == "http://b4"
    assert ids.backend("r9/1") is None


@pytest.mark.parametrize("payload, labels", [
    ({"predictions": [{"label": "positive"}, {"label": "negative"}]}, ["positive", "negative"]),
    ({"outputs": [{"name": "probability", "data": [0.2]}, {"name": "label", "data": ["negative"]}]}, ["negative"]),
    ({"outputs": [{"name": "probability", "data": [0.2]}]}, None),  # V2 asked for the probability only
    ({"error": "model not ready"}, None),
    ([1, 2], None),
])
def test_answer_labels(payload, labels):
    assert answer_labels(json.dumps(payload).encode()) == labels
    assert answer_labels(b"<html>") is None


@pytest.mark.parametrize("retired", ["draining", "stopped"])
def test_a_request_to_a_process_a_promotion_just_retired_goes_where_the_new_routes_say(router, deployments, tmp_path,
                                                                                          retired):
    # `rollout local` promotes by rewriting the routes (stable := canary) and then stopping the old stable: a
    # request that picked the old stable in between, and finds it draining (503) or gone (refused), is sent once
    # more where the new routes say instead of failing; a label by id stays with the deployment that answered.
    import os

    stable, canary = deployments
    url = router(percent=0, mirror=0)
    _, headers, _ = post(url + "/predict", {"instances": TEXTS})
    assert headers["x-sentimentops-backend"] == "stable"
    answered_by_old_stable = headers[REQUEST_ID_HEADER.lower()]
    state = tmp_path / "state.json"
    before = os.stat(state).st_mtime_ns
    write_routes(state, canary, None, 0, 0)  # canary promoted: it is the only deployment now
    os.utime(state, ns=(before, before))  # ... within the file time's resolution: the router has not noticed yet
    if retired == "draining":
        stable.draining = True
    else:
        stable.close()
        stable.close = lambda: None
    status, headers, body = post(url + "/predict", {"instances": TEXTS})
    assert status == 200 and headers["x-sentimentops-backend"] == "stable"  # the new stable: the promoted canary
    assert body["predictions"][1]["label"] == "negative"  # canary's answer ("flip" inverted)
    status, headers, _ = post(url + "/v1/feedback", {"text": "after the promotion", "label": "positive"})
    assert status == 200 and canary.feedback[-1]["text"] == "after the promotion"
    # a label for a request the retired process answered goes to it alone: its 503, or the router's clear 502
    status, _, body = post(url + "/v1/feedback", {"id": answered_by_old_stable, "label": "positive"})
    assert (status, body["error"].split(" ")[0]) in ((503, "draining"), (502, "retired"))
    if retired == "stopped":
        assert "unreachable" in body["error"]
