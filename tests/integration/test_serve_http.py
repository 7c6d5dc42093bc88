"""The predictor as a real server (a `sentimentops serve` subprocess on 127.0.0.1) over a registered-layout folder
(MLmodel + the tiny DistilBERT + its ONNX int8 export): V1/V2/plain contract, the bad-input catalogue, a bounded
schemathesis pass, truncation and mixed-length regressions, overload -> 503 and the SIGTERM drain.

No timed assertions: waits are bounded polls of readiness or of the queue-depth gauge.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import run, spawn
from sentimentops.steps.core.processes import stop as stop_group

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


@pytest.fixture(scope="module")
def served_model(tmp_path_factory, tiny_model_dir, imdb_dir) -> Path:
    from sentimentops.steps.core.config import load_settings
    from sentimentops.steps.evaluate.onnx_export import ExportSettings, export_and_check

    root = tmp_path_factory.mktemp("pyfunc")
    shutil.copytree(tiny_model_dir, root / "artifacts" / "model")
    report = export_and_check(root / "artifacts" / "model", root / "artifacts" / "onnx",
                              load_settings(ExportSettings, {"eval_rows": 100}),
                              eval_set=imdb_dir / "sample_test.parquet")
    assert report.eval_rows == 100 and (root / "artifacts/onnx/model.onnx").is_file()
    # evaluate's drift reference travels with the model; the predictor publishes it next to its records
    from sentimentops.steps.core.psi import build_reference, features_from_predictions

    build_reference(features_from_predictions([20.0 + i for i in range(200)], [i / 200 for i in range(200)],
                                              [0.1] * 200), source="serve-test").write(
        root / "artifacts" / "drift_reference.json")
    (root / "MLmodel").write_text(yaml.safe_dump({"run_id": "run-abc", "flavors": {"python_function": {
        "artifacts": {"model_dir": {"path": "artifacts/model"}, "onnx": {"path": "artifacts/onnx"},
                      "drift_reference": {"path": "artifacts/drift_reference.json"}}}}}))
    return root


class Server:
    def __init__(self, model: Path, tmp: Path, *flags: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        env = {**os.environ, "SENTIMENTOPS_HOME": str(tmp / "home"), "SENTIMENTOPS_MODEL_VERSION": "5"}
        with self.log.open("w") as log:
            self.proc = spawn([CLI, "serve", "--model-dir", str(model), "--port", str(self.port),
                               "--threads", "1", *flags], env=env, stdout=log, stderr=subprocess.STDOUT)

    def call(self, path: str, body: bytes | dict | None = None, method: str | None = None,
             headers: dict | None = None) -> tuple[int, dict, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        request = urllib.request.Request(self.base + path, data=data, method=method or ("POST" if data is not None
                                                                                        else "GET"),
                                         headers=headers or {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw, status, hdrs = response.read(), response.status, response.headers
        except urllib.error.HTTPError as err:
            raw, status, hdrs = err.read(), err.code, err.headers
        hdrs = {k.lower(): v for k, v in hdrs.items()}
        try:
            return status, json.loads(raw), hdrs
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}, hdrs

    def wait_ready(self, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.call("/v2/health/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.3)
        return False

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.base + "/metrics", timeout=10).read().decode()
        match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, flags=re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> int:
        """SIGTERM the server itself (what the drain tests look at), then end its whole process group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = -9
        stop_group(self.proc, grace_s=5)
        return code


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    srv = Server(served_model, tmp, "--prediction-log", str(tmp / "predictions.jsonl"))
    assert srv.wait_ready(), srv.log.read_text()[-3000:]
    yield srv
    srv.stop()


def test_v1_both_instance_shapes_typed_answers(server):
    status, body, _ = server.call("/v1/models/sentiment:predict", {"instances": ["a fine film", {"text": "dull"}]})
    assert status == 200
    preds = body["predictions"]
    assert len(preds) == 2
    for p in preds:
        assert set(p) == {"label", "probability", "model_name", "model_version"}
        assert p["label"] in ("negative", "positive") and isinstance(p["probability"], float)
        assert (p["probability"] >= 0.5) == (p["label"] == "positive")
        assert (p["model_name"], p["model_version"]) == ("sentiment", "5")


def test_plain_predict_is_v1(server):
    body = {"instances": ["a fine film", "dull"]}
    plain, v1 = server.call("/predict", body)[1], server.call("/v1/models/sentiment:predict", body)[1]
    assert plain["predictions"] == v1["predictions"] and set(plain) == set(v1) == {"id", "predictions"}
    assert plain["id"] != v1["id"]  # each request its own id


def test_v2_infer_typed_tensors_and_id(server):
    status, body, _ = server.call("/v2/models/sentiment/infer", {
        "id": "req-1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["good", "bad"]}]})
    assert status == 200
    assert (body["model_name"], body["model_version"], body["id"]) == ("sentiment", "5", "req-1")
    label, prob = body["outputs"]
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "BYTES", [2])
    assert (prob["name"], prob["datatype"], prob["shape"]) == ("probability", "FP32", [2])
    assert all(isinstance(p, float) and 0 <= p <= 1 for p in prob["data"])
    v1 = server.call("/predict", {"instances": ["good", "bad"]})[1]["predictions"]
    assert prob["data"] == [p["probability"] for p in v1]  # one model, one answer, whichever protocol


def test_health_metadata_and_metrics(server):
    status, health, _ = server.call("/health")
    assert status == 200 and health["backend"] == "onnx-int8" and health["model_version"] == "5"
    assert server.call("/v2/health/live")[0] == 200
    assert server.call("/v2/models/sentiment/ready")[0] == 200
    assert server.call("/v1/models/sentiment")[1] == {"name": "sentiment", "ready": True}
    meta = server.call("/v2/models/sentiment")[1]
    assert meta["inputs"][0]["datatype"] == "BYTES"
    text = urllib.request.urlopen(server.base + "/metrics", timeout=10).read().decode()
    assert ('sentiment_model_info{backend="onnx-int8",model_name="sentiment",model_version="5",run_id="run-abc"} 1.0'
            in text)
    assert "sentiment_model_ready 1.0" in text
    assert re.search(r'sentiment_request_duration_seconds_count\{protocol="v2",status="200"\} [1-9]', text)


def test_root_answers_like_kserves_model_server_and_kserves_client_agrees(server):
    """KServe's model server answers GET / with {"status": "alive"}; its own client (InferenceRESTClient,
    protocol v1) checks liveness there (404 here once made it report the predictor dead), v2 on /v2/health/live."""
    import asyncio

    from kserve import InferenceRESTClient, RESTConfig

    assert server.call("/")[:2] == (200, {"status": "alive"})

    async def ask() -> tuple:
        v1, v2 = InferenceRESTClient(RESTConfig(protocol="v1")), InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            answer = await v1.infer(server.base, {"instances": ["a fine film"]}, model_name="sentiment")
            return (await v1.is_server_live(server.base), await v2.is_server_live(server.base),
                    await v1.is_model_ready(server.base, "sentiment"),
                    await v2.is_model_ready(server.base, "sentiment"), answer["predictions"][0]["model_version"])
        finally:
            await v1.close()
            await v2.close()

    assert asyncio.run(ask()) == (True, True, True, True, "5")


def test_the_drift_reference_is_published_next_to_the_prediction_log(server, served_model):
    """The drift sidecar reads <dir>/drift_reference.json beside <dir>/records.jsonl: the served model's own
    reference, written when the model loaded (before readiness), byte for byte."""
    published = Path(server.log).parent / "drift_reference.json"
    assert published.read_bytes() == (served_model / "artifacts" / "drift_reference.json").read_bytes()
    assert not list(published.parent.glob(".drift_reference.json.*"))  # no temporary left behind


def test_prediction_records_have_no_text(server, tmp_path_factory):
    server.call("/predict", {"instances": ["a record for the drift monitor"]})
    log = next(Path(server.log).parent.glob("predictions.jsonl"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all("text" not in r for r in records)
    assert set(records[-1]) == {"ts", "model_version", "input_tokens", "truncated", "confidence", "probability",
                                "label", "content"}
    assert records[-1]["model_version"] == "5" and 0 <= records[-1]["content"] <= 1


def v2(**tensor):
    body = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}
    body.update(tensor)
    return json.dumps({"inputs": [body]}).encode()


J = {"Content-Type": "application/json"}
V1, V2 = "/v1/models/sentiment:predict", "/v2/models/sentiment/infer"
# (case, path, raw body, headers, expected status). Each failure mode a client has sent, or could.
CATALOGUE = [
    ("malformed JSON", V1, b'{"instances": [', J, 400),
    ("empty body", V1, b"", J, 400),
    ("JSON null", V1, b"null", J, 400),
    ("top-level list", V1, b"[]", J, 400),
    ("top-level string", V1, b'"a review"', J, 400),
    ("instances is a string", V1, b'{"instances": "a review"}', J, 400),
    ("instances empty", V1, b'{"instances": []}', J, 400),
    ("instance is a number", V1, b'{"instances": [42]}', J, 400),
    ("instance is null", V1, b'{"instances": [null]}', J, 400),
    ("instance is a nested list", V1, b'{"instances": [["nested"]]}', J, 400),
    ("missing text field", V1, b'{"instances": [{"txt": "x"}]}', J, 400),
    ("text is a number", V1, b'{"instances": [{"text": 5}]}', J, 400),
    ("empty string", V1, b'{"instances": [""]}', J, 400),
    ("whitespace only", V1, b'{"instances": ["  \\n\\t  "]}', J, 400),
    ("control characters only", V1, b'{"instances": ["\\u0000\\u0001\\u0007"]}', J, 400),
    ("raw control character in JSON", V1, b'{"instances": ["a\x01b"]}', J, 400),
    ("invalid UTF-8", V1, b'{"instances": ["\xff\xfe bad"]}', J, 400),
    ("lone surrogate", V1, b'{"instances": ["\\ud800"]}', J, 400),
    ("NaN literal", V1, b'{"instances": [NaN]}', J, 400),
    ("deeply nested JSON", V1, b"[" * 5000 + b"]" * 5000, J, 400),
    ("10,000 instances", V1, json.dumps({"instances": ["ok"] * 10_000}).encode(), J, 413),
    ("huge payload", V1, json.dumps({"instances": ["word " * 400_000]}).encode(), J, 413),
    ("wrong content type", V1, b'{"instances": ["ok"]}', {"Content-Type": "text/plain"}, 415),
    ("form content type", "/predict", b"instances=ok", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("V2 body on V1", V1, v2(), J, 400),
    ("V1 body on V2", V2, b'{"instances": ["ok"]}', J, 400),
    ("V2 wrong datatype", V2, v2(datatype="FP32"), J, 400),
    ("V2 shape mismatch", V2, v2(shape=[3]), J, 400),
    ("V2 numbers as data", V2, v2(data=[1.5]), J, 400),
    ("V2 wrong input name", V2, v2(name="review"), J, 400),
    ("V2 negative shape", V2, v2(shape=[-1]), J, 400),
    ("V2 id not a string", V2, json.dumps({"id": 7, "inputs": json.loads(v2())["inputs"]}).encode(), J, 400),
    ("V2 unknown output", V2, json.dumps({"inputs": json.loads(v2())["inputs"],
                                          "outputs": [{"name": "x"}]}).encode(), J, 400),
    ("unknown model V1", "/v1/models/other:predict", b'{"instances": ["ok"]}', J, 404),
    ("unknown model V2", "/v2/models/other/infer", v2(), J, 404),
    ("GET on predict", "/predict", None, J, 405),
]


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 30


@pytest.mark.parametrize(("case", "path", "body", "headers", "expected"), CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_gets_its_4xx_with_a_message(server, case, path, body, headers, expected):
    status, answer, _ = server.call(path, body, method="GET" if body is None else "POST", headers=headers)
    assert status == expected, answer
    assert isinstance(answer.get("error"), str) and answer["error"]


def test_after_the_catalogue_the_server_is_still_ready_and_counted_no_5xx(server):
    for case, path, body, headers, _ in CATALOGUE:
        server.call(path, body, method="GET" if body is None else "POST", headers=headers)
    assert server.call("/v2/health/ready")[0] == 200
    assert server.call("/predict", {"instances": ["still serving"]})[0] == 200
    text = urllib.request.urlopen(server.base + "/metrics", timeout=10).read().decode()
    assert not re.search(r'sentiment_requests_total\{[^}]*status="5\d\d"\}', text)
    assert re.search(r'sentiment_errors_total\{protocol="v1",reason="payload_too_large",status="413"\} [1-9]', text)


def test_truncation_good_times_600(server):
    """Regression (kserve issue 3438): "good " * 600 is ~600 tokens, past DistilBERT's 512 positions: it is
    truncated and answered, counted in sentiment_truncated_total, never a crash."""
    before = server.metric("sentiment_truncated_total")
    status, body, _ = server.call("/predict", {"instances": ["good " * 600]})
    assert status == 200 and body["predictions"][0]["label"] in ("negative", "positive")
    assert server.metric("sentiment_truncated_total") == before + 1


def test_mixed_length_batch_matches_single_requests(server):
    """Regression: a short review batched beside a 512-token one must get its own answer (padding masked)."""
    short, long = "a short and sweet film", "a long review of the plot " * 120
    alone = server.call("/predict", {"instances": [short]})[1]["predictions"][0]
    mixed = server.call("/predict", {"instances": [long, short, long]})[1]["predictions"][1]
    assert mixed["label"] == alone["label"]
    # int8 dynamic quantization scales activations per batch tensor: equal up to quantization noise
    assert mixed["probability"] == pytest.approx(alone["probability"], abs=0.02)


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """A bounded property-based pass over the OpenAPI schema (the 2-minute run is benchmarks/serve/fuzz.sh)."""
    done = run([SCHEMATHESIS, "run", f"{server.base}/openapi.json", "--checks", "not_a_server_error",
                "--max-examples", "15", "--seed", "1", "--request-timeout", "30", "--max-time", "120",
                "--generation-deterministic", "--report-dir", str(tmp_path)],
               timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert server.call("/v2/health/ready")[0] == 200


def test_truncation_reject_mode_and_missing_artifact(served_model, tmp_path):
    reject = Server(served_model, tmp_path, "--truncation", "reject")
    broken_dir = tmp_path / "broken"
    shutil.copytree(served_model, broken_dir)
    (broken_dir / "artifacts/onnx/model.onnx").write_bytes(b"not an onnx file")
    broken = Server(broken_dir, tmp_path)
    try:
        assert reject.wait_ready(), reject.log.read_text()[-3000:]
        status, body, _ = reject.call("/predict", {"instances": ["good " * 600]})
        assert status == 400 and "more than 512 tokens" in body["error"]
        assert reject.call("/predict", {"instances": ["good"]})[0] == 200
        # a corrupt artifact: the process stays up, not ready, with the reason; no crash loop
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "NOT loaded" not in broken.log.read_text():
            time.sleep(0.3)
        assert broken.proc.poll() is None
        status, body, headers = broken.call("/v2/health/ready")
        assert status == 503 and "model not ready" in body["error"] and "retry-after" in headers
        assert broken.call("/predict", {"instances": ["good"]})[0] == 503
        assert "NOT loaded" in broken.log.read_text()
    finally:
        reject.stop()
        broken.stop()


def _wait_depth(srv: Server, depth: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and srv.metric("sentiment_queue_depth") < depth:
        time.sleep(0.05)
    assert srv.metric("sentiment_queue_depth") >= depth


def test_overload_answers_503_with_retry_after_not_500(served_model, tmp_path):
    # a long gather window kept even when idle, and a small queue: the first request waits in the queue, the next
    # overflows it
    srv = Server(served_model, tmp_path, "--max-queue", "4", "--max-wait-ms", "4000", "--max-batch-size", "64",
                 "--wait-when-idle")
    try:
        assert srv.wait_ready(), srv.log.read_text()[-3000:]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(srv.call, "/predict", {"instances": ["one", "two", "three"]})
            _wait_depth(srv, 3)
            status, body, headers = srv.call("/predict", {"instances": ["four", "five"]})
            assert status == 503 and headers.get("retry-after") == "1" and "overloaded" in body["error"]
            assert first.result(timeout=60)[0] == 200
        assert srv.metric('sentiment_errors_total{protocol="predict",reason="overloaded",status="503"}') == 1
    finally:
        srv.stop()


def test_sigterm_drains_in_flight_requests(served_model, tmp_path):
    srv = Server(served_model, tmp_path, "--max-wait-ms", "3000", "--max-batch-size", "64", "--wait-when-idle")
    try:
        assert srv.wait_ready(), srv.log.read_text()[-3000:]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(srv.call, "/predict", {"instances": [f"review number {i}"]}) for i in range(8)]
            _wait_depth(srv, 8)  # all eight are in flight, waiting in the batcher
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        assert [r[0] for r in results] == [200] * 8  # none lost
        assert srv.proc.wait(timeout=60) == 0
        assert "draining" in srv.log.read_text()
    finally:
        srv.stop()
