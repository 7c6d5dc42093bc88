"""The router between two real predictors (`sentimentops serve`, the tiny model's ONNX export, capture on, a local
production store): the contract between them, end to end on 127.0.0.1.

- every predict answer's X-Request-Id reaches the client through the router, and feedback by that id (or by the
  capture id `<request id>/<instance>`) reaches the predictor that captured it: none is refused as unknown, and
  each predictor's `sentiment_feedback_total` counts exactly the labels of the requests it served;
- mirrored requests are answered by the other predictor too and compared: the same model on both sides agrees on
  every instance.
"""
from __future__ import annotations

import json
import sys

import pytest
from test_rollout_router import get, mirror_counts, post
from test_serve_capture import metric_value
from test_serve_http import Server, served_model  # noqa: F401 - the module-scoped model fixture, reused

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import spawn, stop, wait_for
from sentimentops.steps.core.production import REQUEST_ID_HEADER

pytestmark = pytest.mark.slow
RID = REQUEST_ID_HEADER.lower()
TEXTS = ["A wonderful, moving film with a great cast.", "Dull, predictable and far too long."]


@pytest.fixture()
def setup(served_model, tmp_path):  # noqa: F811 - the fixture imported above
    servers = []
    try:
        for role in ("stable", "canary"):
            srv = Server(served_model, tmp_path, "--production-store", str(tmp_path / f"store-{role}"),
                         "--capture-rate", "1.0")
            servers.append(srv)
        for srv in servers:
            assert srv.wait_ready(), srv.log.read_text()[-3000:]
        state = tmp_path / "state.json"
        state.write_text(json.dumps({"routes": {
            "stable": servers[0].base, "stable_version": "1", "canary": servers[1].base, "canary_version": "2",
            "canary_percent": 50, "mirror_percent": 100}}))
        port = free_port()
        with (tmp_path / "router.log").open("ab") as log:
            router = spawn([sys.executable, "-m", "sentimentops.steps.rollout.router", "--port", str(port),
                            "--state", str(state), "--seed", "5"], stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: get(url + "/_router/health") is not None, 30, "the router", [router])
            yield url, {"stable": servers[0], "canary": servers[1]}
        finally:
            stop(router, grace_s=5)
    finally:
        for srv in servers:
            srv.stop()


def feedback_count(srv: Server) -> float:
    return sum(metric_value(srv, f'sentiment_feedback_total{{correct="{c}",model_version="5"}}')
               for c in ("true", "false"))


def test_feedback_by_id_reaches_the_predictor_that_captured_the_request(setup):
    url, servers = setup
    served = {}
    for _ in range(16):
        status, headers, body = post(url + "/v1/models/sentiment:predict", {"instances": TEXTS})
        assert status == 200, body
        served[headers[RID]] = headers["x-sentimentops-backend"]
    assert set(served.values()) == {"stable", "canary"}
    for i, request_id in enumerate(served):
        status, headers, body = post(url + "/v1/feedback", {"id": f"{request_id}/{i % 2}", "label": "positive"})
        assert status == 200, body
        assert headers["x-sentimentops-backend"] == served[request_id]
    for role, srv in servers.items():
        assert feedback_count(srv) == sum(r == role for r in served.values()), [
            line for line in (get(srv.base + "/metrics") or "").splitlines() if "feedback" in line]
    # the same model answers both sides: every mirrored instance agrees
    counts = wait_for(lambda: (c := mirror_counts(url)) and sum(c.values()) == 32 and c, 60, "every comparison")
    assert counts == {"true": 32.0, "false": 0.0}
