"""`POST /v1/models/{name}:explain` on a real predictor (a `sentimentops serve` subprocess on 127.0.0.1) over the
tiny DistilBERT: the answer's shape, offsets and cost, that a weight is what :predict says the word is worth, the
bounds and the 4xx/404 catalogue in :predict's error format, its own metrics (kept out of the request metrics and
the prediction counters), :predict answered while an explanation runs, and every backend (onnx-int8, onnx-fp32,
torch).

No timed assertions: waits are bounded polls of readiness or of a request's completion.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import spawn
from sentimentops.steps.core.processes import stop as stop_group

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
EXPLAIN, PREDICT = "/v1/models/sentiment:explain", "/v1/models/sentiment:predict"
REVIEW = "A slow start, but the acting is superb and the ending made me smile."
FIELDS = {"label", "probability", "model_name", "model_version", "method", "occlusion", "words", "top",
          "attributed_words", "total_words", "truncated", "forward_passes"}


def sharpened(tiny: Path, out: Path, texts: list[str]) -> Path:
    """The tiny model with its classifier aimed along the main direction in which its features vary (scaled to a
    logit spread of ~3 on real reviews). Untrained, the tiny model's P(positive) moves by ~1e-6 between inputs, so
    every weight would be ~0 and a check that a weight equals a difference of predictions would hold vacuously."""
    import torch
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    shutil.copytree(tiny, out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    features: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda mod, args, _: features.append(args[0].detach()))
    with torch.no_grad():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(out)
        model(**tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt"))
        model(**tokenizer([REVIEW], truncation=True, max_length=128, return_tensors="pt"))
    hook.remove()
    x, review = features[0], features[1][0]
    mean = x.mean(0)
    direction = torch.linalg.svd(x - mean, full_matrices=False).Vh[0]
    scale = 1.5 / ((x - mean) @ direction).std()
    # The boundary is placed so that REVIEW, the explained text, sits at a logit margin of 1 (P ~0.73), where a word
    # moves P measurably. Centred on the 64 reviews' mean instead, REVIEW's margin depended on the tiny model's
    # WordPiece vocabulary, which the tokenizers trainer does not make the same from one session to the next (it
    # breaks count ties in no fixed order): clean-clone CI saw P = 0.9999 and a top word weight of 7e-5.
    centre = mean + ((review - mean) @ direction - 0.5 / scale) * direction
    with torch.no_grad():
        model.classifier.weight.copy_(torch.stack([-scale * direction, scale * direction]))
        model.classifier.bias.copy_(torch.stack([scale * direction @ centre, -scale * direction @ centre]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir, imdb_dir) -> dict[str, Path]:
    """Two plain Hugging Face folders with an `onnx/` export each: int8 and fp32 (torch serves the fp32 one)."""
    import pandas as pd

    from sentimentops.steps.evaluate.onnx_export import export_candidates

    root = tmp_path_factory.mktemp("explain-models")
    texts = pd.read_parquet(imdb_dir / "sample_test.parquet")["text"].head(64).tolist()
    model = sharpened(tiny_model_dir, root / "sharpened", texts)
    cands = export_candidates(model, root)
    found = {}
    for name, onnx in (("int8", cands.int8), ("fp32", cands.fp32)):
        folder = root / name
        shutil.copytree(model, folder)
        (folder / "onnx").mkdir()
        shutil.copy(onnx, folder / "onnx" / "model.onnx")
        found[name] = folder
    return found


class Server:
    def __init__(self, model: Path, tmp: Path, backend: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        env = {**os.environ, "SENTIMENTOPS_HOME": str(tmp / "home"), "SENTIMENTOPS_MODEL_VERSION": "7"}
        with self.log.open("w") as log:
            self.proc = spawn([CLI, "serve", "--model-dir", str(model), "--port", str(self.port), "--threads", "1",
                               "--backend", backend], env=env, stdout=log, stderr=subprocess.STDOUT)

    def call(self, path: str, body: bytes | dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        request = urllib.request.Request(self.base + path, data=data, method="POST" if data is not None else "GET",
                                         headers=headers or {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def wait_ready(self, timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.call("/v2/health/ready")[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.3)
        return False

    def metrics(self) -> str:
        return urllib.request.urlopen(self.base + "/metrics", timeout=10).read().decode()

    def metric(self, series: str) -> float:
        match = re.search(rf"^{re.escape(series)} ([0-9.e+-]+)$", self.metrics(), flags=re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        stop_group(self.proc, grace_s=30)


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    srv = Server(folders["int8"], tmp_path_factory.mktemp("serve-explain"), "onnx-int8")
    assert srv.wait_ready(), srv.log.read_text()[-3000:]
    yield srv
    srv.stop()


def check_explanation(e: dict, text: str) -> None:
    assert set(e) == FIELDS, e
    assert (e["method"], e["occlusion"], e["model_name"], e["model_version"]) == (
        "occlusion", "delete", "sentiment", "7")
    assert (e["probability"] >= 0.5) == (e["label"] == "positive")
    assert len(e["words"]) == e["attributed_words"] and e["forward_passes"] == 1 + e["attributed_words"]
    for w in e["words"]:
        assert set(w) == {"word", "start", "end", "weight"} and text[w["start"]:w["end"]] == w["word"]
    starts = [w["start"] for w in e["words"]]
    assert starts == sorted(starts)  # text order
    assert len(e["top"]) == 5 and all(w in e["words"] for w in e["top"])
    top = [abs(w["weight"]) for w in e["top"]]
    assert top == sorted(top, reverse=True)
    assert min(top) >= max(abs(w["weight"]) for w in e["words"] if w not in e["top"])


def test_explain_answers_both_instance_shapes_like_predict(server):
    status, body = server.call(EXPLAIN, {"instances": [REVIEW, {"text": "Dull."}]})
    assert status == 200, body
    first, second = body["explanations"]
    check_explanation(first, REVIEW)
    assert [w["word"] for w in first["words"]][:4] == ["A", "slow", "start", ","]
    assert first["total_words"] == first["attributed_words"] == 16 and not first["truncated"]
    assert [w["word"] for w in second["words"]] == ["Dull", "."] and len(second["top"]) == 2
    predicted = server.call(PREDICT, {"instances": [REVIEW, "Dull."]})[1]["predictions"]
    for e, p in zip(body["explanations"], predicted, strict=True):
        assert e["label"] == p["label"]
        # int8 dynamic quantization scales activations per batch tensor: equal up to quantization noise
        assert e["probability"] == pytest.approx(p["probability"], abs=0.02)


def test_a_long_review_is_bounded_and_says_what_was_not_attributed(server):
    mixed = "Dull. " * 100 + "the plot " * 200 + "a wonderful film, truly! " * 60  # head, middle and tail differ
    status, body = server.call(EXPLAIN, {"instances": ["good " * 600, mixed]})
    assert status == 200, body
    e, m = body["explanations"]
    assert e["truncated"] and (e["attributed_words"], e["total_words"], e["forward_passes"]) == (64, 600, 65)
    assert m["truncated"] and m["attributed_words"] == 64 and m["words"][0]["word"] == "Dull"
    # the same head + tail cut as :predict (contract.keep_head_tail): the same probability
    predicted = server.call(PREDICT, {"instances": [mixed]})[1]["predictions"][0]
    assert m["probability"] == pytest.approx(predicted["probability"], abs=0.02)


J = {"Content-Type": "application/json"}
CATALOGUE = [
    ("empty body", EXPLAIN, b"", J, 400, "JSON"),
    ("malformed JSON", EXPLAIN, b'{"instances": [', J, 400, "JSON"),
    ("top-level list", EXPLAIN, b'[{"text": "ok"}]', J, 400, "instances"),
    ("instances empty", EXPLAIN, b'{"instances": []}', J, 400, "non-empty"),
    ("text is a number", EXPLAIN, b'{"instances": [{"text": 5}]}', J, 400, "expected a string"),
    ("whitespace only", EXPLAIN, b'{"instances": ["  "]}', J, 400, "empty"),
    ("control characters only", EXPLAIN, b'{"instances": ["\\u0000\\u0001"]}', J, 400, "no text left"),
    ("invalid UTF-8", EXPLAIN, b'{"instances": ["\xff bad"]}', J, 400, "UTF-8"),
    ("nine instances", EXPLAIN, json.dumps({"instances": ["ok"] * 9}).encode(), J, 400, "at most 8"),
    ("oversize text", EXPLAIN, json.dumps({"instances": ["word " * 400_000]}).encode(), J, 413, "bytes"),
    ("wrong content type", EXPLAIN, b'{"instances": ["ok"]}', {"Content-Type": "text/plain"}, 415, "content type"),
    ("unknown model", "/v1/models/other:explain", b'{"instances": ["ok"]}', J, 404, "not served here"),
]


@pytest.mark.parametrize(("case", "path", "body", "headers", "expected", "message"), CATALOGUE,
                         ids=[c[0] for c in CATALOGUE])
def test_bad_input_gets_predicts_4xx_with_a_message(server, case, path, body, headers, expected, message):
    status, answer = server.call(path, body, headers=headers)
    assert status == expected, answer
    assert set(answer) == {"error"} and message in answer["error"]


def test_explain_has_its_own_metrics_and_is_no_prediction_traffic(server):
    before = server.metrics()
    passes = server.metric("sentiment_explain_forward_passes_total")
    ok = server.metric('sentiment_explain_requests_total{status="200"}')
    bad = server.metric('sentiment_explain_requests_total{status="400"}')
    predictions = sum(server.metric(f'sentiment_predictions_total{{label="{x}"}}') for x in ("negative", "positive"))
    e = server.call(EXPLAIN, {"instances": [REVIEW]})[1]["explanations"][0]
    server.call(EXPLAIN, {"instances": [""]})
    assert server.metric("sentiment_explain_forward_passes_total") == passes + e["forward_passes"]
    assert server.metric('sentiment_explain_requests_total{status="200"}') == ok + 1
    assert server.metric('sentiment_explain_requests_total{status="400"}') == bad + 1
    assert server.metric('sentiment_explain_duration_seconds_count{status="200"}') == ok + 1
    after = server.metrics()
    assert 'protocol="explain"' not in after  # the request metrics (SLO, alerts, canary analysis) stay :predict's
    assert sum(server.metric(f'sentiment_predictions_total{{label="{x}"}}') for x in ("negative", "positive")) \
        == predictions  # occluded variants are not predictions (nor drift records)
    requests = re.compile(r"^sentiment_requests_total.*$", flags=re.MULTILINE)
    assert requests.findall(before) == requests.findall(after)


def test_predict_is_answered_while_an_explanation_runs(server):
    reviews = [f"review {i}: " + "a long and winding plot that goes nowhere " * 50 for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        explaining = pool.submit(server.call, EXPLAIN, {"instances": reviews})
        answered_during = 0
        while not explaining.done():
            status, _ = server.call(PREDICT, {"instances": ["a quick question"]})
            assert status == 200
            answered_during += not explaining.done()
        status, body = explaining.result()
    assert status == 200 and len(body["explanations"]) == 8
    assert answered_during >= 1


@pytest.mark.parametrize(("backend", "folder"), [("onnx-fp32", "fp32"), ("torch", "fp32")])
def test_every_backend_explains_and_a_weight_is_what_predict_says_the_word_is_worth(folders, tmp_path, backend,
                                                                                     folder):
    srv = Server(folders[folder], tmp_path, backend)
    try:
        assert srv.wait_ready(), srv.log.read_text()[-3000:]
        assert srv.call("/health")[1]["backend"] == backend
        status, body = srv.call(EXPLAIN, {"instances": [REVIEW]})
        assert status == 200, body
        e = body["explanations"][0]
        check_explanation(e, REVIEW)
        top = e["top"][0]
        without = REVIEW[:top["start"]] + REVIEW[top["end"]:]  # the same tokens as deleting the word's tokens
        p_full, p_without = (p["probability"] for p in srv.call(PREDICT, {"instances": [REVIEW, without]})[1][
            "predictions"])
        assert e["probability"] == pytest.approx(p_full, abs=1e-4)
        assert 0.6 < e["probability"] < 0.85, e  # sharpened() put REVIEW at a margin of 1: far from saturation
        # Not vacuous: the untrained tiny model's words move P(positive) by ~1e-6. (Before sharpened() placed the
        # boundary at REVIEW, this failed in clean-clone CI at 6.9e-4 and 7.2e-5: see sharpened().)
        assert abs(top["weight"]) > 1e-3
        assert top["weight"] == pytest.approx(p_full - p_without, abs=1e-4)
        assert srv.call("/v1/models/other:explain", {"instances": ["ok"]})[0] == 404
    finally:
        srv.stop()
