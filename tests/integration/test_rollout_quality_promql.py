"""The quality PromQL (steps/rollout/analysis.py) against a real Prometheus (Debian): a target on 127.0.0.1 exposes
the predictors' feedback counter and the router's mirror counter, first at zero (as both initialise them), then
with known counts; the probe must read each version's labels and the mirrored comparisons back, and the policy
judge them. In the cluster the mirror series never exists: the probe reads (0, 0) and agreement is no data."""
from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import spawn, stop, wait_for
from sentimentops.steps.rollout.analysis import Probe, Prometheus, PrometheusError
from sentimentops.steps.rollout.policy import RolloutPolicy, judge

if shutil.which("prometheus") is None:
    pytest.skip("prometheus (Debian package) is not installed: apt-get install -y prometheus",
                allow_module_level=True)


def exposition(counts: dict[tuple[str, str], int], mirrored: dict[str, int]) -> str:
    lines = ["# TYPE sentiment_feedback_total counter"]
    lines += [f'sentiment_feedback_total{{correct="{correct}",model_version="{version}"}} {n}'
              for (version, correct), n in counts.items()]
    lines += ["# TYPE sentiment_mirror_total counter"]
    lines += [f'sentiment_mirror_total{{agree="{agree}",canary="2",stable="1"}} {n}' for agree, n in mirrored.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture()
def prometheus(tmp_path):
    page = {"text": exposition({("1", "true"): 0, ("1", "false"): 0, ("2", "true"): 0, ("2", "false"): 0},
                               {"true": 0, "false": 0})}

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            body = page["text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: quality
    static_configs:
      - targets: ["127.0.0.1:{server.server_address[1]}"]
""")
    log = (tmp_path / "prometheus.log").open("ab")
    proc = spawn([shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], stdout=log, stderr=log)
    log.close()
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", timeout_s=5), page, proc
    finally:
        stop(proc, grace_s=10)
        server.shutdown()
        server.server_close()


def query(prom: Prometheus, expr: str) -> float | None:
    try:
        return prom.query(expr)
    except PrometheusError:  # not up yet
        return None


def test_feedback_accuracy_and_agreement_are_read_per_version(prometheus):
    prom, page, proc = prometheus
    # both counters' zero samples stored first: increase() counts from there
    wait_for(lambda: query(prom, 'count(sentiment_mirror_total{job="quality"})') == 2, 60, "the zero scrape", [proc])
    page["text"] = exposition({("1", "true"): 340, ("1", "false"): 60, ("2", "true"): 200, ("2", "false"): 200},
                              {"true": 450, "false": 50})
    probe = Probe(prom, extra={"job": "quality"})
    wait_for(lambda: (query(prom, 'sum(sentiment_mirror_total{job="quality"})') or 0) >= 500, 60, "the counts",
             [proc])
    obs = probe.observe("1", "2", window_s=120, elapsed_s=120)
    # increase() extrapolates, by the same factor for every series scraped together when queried at one instant
    # (the probe queries at one instant): the ratios are what the counters say
    assert obs.stable.feedback_total >= 400 and obs.canary.feedback_total >= 400
    assert obs.stable.feedback_accuracy == pytest.approx(0.85, abs=0.005)
    assert obs.canary.feedback_accuracy == pytest.approx(0.5, abs=0.005)
    assert obs.mirrored_total >= 500 and obs.agreement == pytest.approx(0.9, abs=0.005)
    checks = {c.name: c for c in judge(obs, RolloutPolicy()).checks}
    assert checks["feedback_accuracy"].status == "fail" and checks["feedback_accuracy"].value == pytest.approx(0.35, abs=0.01)
    assert checks["agreement"].status == "pass"
    # a version with no feedback series, and a pair the router never compared: zeros, judged as no data
    none = probe.observe("7", "8", window_s=120, elapsed_s=120)
    assert (none.canary.feedback_total, none.mirrored_total) == (0, 0)
    assert {c.name: c.status for c in judge(none, RolloutPolicy()).checks}["agreement"] == "no_data"
