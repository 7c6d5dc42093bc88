"""The predictor's fault injection (steps/serve/faults.py): off by default, seeded, and visible in the predictor's
own metrics (sentiment_requests_total / sentiment_errors_total / the duration histogram) like real failures."""
from __future__ import annotations

import asyncio

import pytest

from sentimentops.steps.serve import faults


def test_off_by_default():
    assert not faults.from_env({})


def test_error_rate_is_seeded_and_close_to_the_setting():
    def failures(seed: int) -> list[int]:
        f = faults.from_env({"SENTIMENTOPS_SERVE_FAULT_ERROR_RATE": "0.05", "SENTIMENTOPS_SERVE_FAULT_SEED": str(seed)})
        out = []
        for i in range(2000):
            try:
                asyncio.run(f.apply())
            except faults.InjectedFault:
                out.append(i)
        return out

    first = failures(1)
    assert first == failures(1)
    assert 60 <= len(first) <= 140


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        faults.from_env({"SENTIMENTOPS_SERVE_FAULT_ERROR_RATE": "1.5"})
    with pytest.raises(ValueError):
        faults.from_env({"SENTIMENTOPS_SERVE_FAULT_STATUS": "404"})


def test_faults_show_in_the_predictors_own_metrics(monkeypatch, tiny_model_dir):
    from fastapi.testclient import TestClient

    from sentimentops.steps.serve.model import ModelInfo
    from sentimentops.steps.serve.server import ServeSettings, build

    monkeypatch.setenv("SENTIMENTOPS_SERVE_FAULT_ERROR_RATE", "1.0")
    monkeypatch.setenv("SENTIMENTOPS_SERVE_FAULT_LATENCY_MS", "150")
    _, app = build(tiny_model_dir, ModelInfo("sentiment", "7"), ServeSettings(backend="torch", threads=1))
    with TestClient(app) as client:
        for _ in range(200):
            if client.get("/v2/health/ready").status_code == 200:
                break
            asyncio.run(asyncio.sleep(0.1))
        answers = [client.post("/v1/models/sentiment:predict", json={"instances": ["good"]}) for _ in range(3)]
        text = client.get("/metrics").text
    assert [a.status_code for a in answers] == [500, 500, 500]
    assert 'sentiment_requests_total{protocol="v1",status="500"} 3.0' in text
    assert 'sentiment_errors_total{protocol="v1",reason="internal",status="500"} 3.0' in text
    # every answer took the injected 150 ms: none falls in the buckets up to 0.1 s
    assert 'sentiment_request_duration_seconds_bucket{le="0.1",protocol="v1",status="500"} 0.0' in text
