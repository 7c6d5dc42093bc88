"""sentimentops.steps.drift.cli: windows and the persistence rule, record parsing and tailing (rotation), the webhook reason,
the Evidently report, and the /metrics of `drift watch` (a real subprocess on 127.0.0.1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import run, spawn, stop
from sentimentops.steps.core.psi import build_reference, features_from_predictions
from sentimentops.steps.drift.cli import DriftMonitor, DriftSettings, reference_from_pyfunc
from sentimentops.steps.drift.records import RecordTail, parse_records
from sentimentops.steps.drift.webhook import reason_from_body


def records(rng, n, length_mean=230.0, p_positive=0.5, version="3") -> list[str]:
    tokens = np.clip(rng.lognormal(np.log(length_mean), 0.6, n), 5, 512).round()
    positive = rng.random(n) < p_positive
    prob = np.where(positive, rng.beta(8, 2, n), rng.beta(2, 8, n))
    content = rng.beta(2, 20, n)
    return [json.dumps({"ts": 1764201600.0 + i, "model_version": version, "input_tokens": int(t),
                        "truncated": bool(t >= 512), "confidence": float(max(p, 1 - p)), "probability": float(p),
                        "label": "positive" if p >= 0.5 else "negative", "content": float(c)})
            for i, (t, p, c) in enumerate(zip(tokens, prob, content, strict=True))]


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(1)
    features, _ = parse_records(records(rng, 5000))
    return build_reference(features, source="unit")


def test_parse_records_skips_broken_lines():
    rng = np.random.default_rng(0)
    good = records(rng, 3)
    features, versions = parse_records([*good, "{not json", '{"input_tokens": 3}', good[0][:20]])
    assert len(features) == 3 and versions == ["3", "3", "3"]


def test_no_drift_windows_never_trigger_and_a_shift_triggers_after_persist(reference):
    rng = np.random.default_rng(2)
    fired = []
    monitor = DriftMonitor(reference, window=500, threshold=0.2, persist=2,
                           on_trigger=lambda reason, result: fired.append((reason, result.index)))
    results = monitor.add(records(rng, 500 * 10))
    assert len(results) == 10 and not fired
    assert max(max(r.psi.values()) for r in results) < 0.1
    shifted = monitor.add(records(rng, 500 * 3, length_mean=25))
    assert shifted[0].drifted[0] == "input_tokens"  # detected in the first shifted window
    assert len(fired) == 1 and fired[0][1] == 11  # called once, after 2 windows in a row
    assert fired[0][0].startswith("drift: input_tokens PSI ") and "for 2 window(s) of 500 (model 3)" in fired[0][0]


def test_trigger_rearms_only_after_a_clean_window(reference):
    rng = np.random.default_rng(3)
    fired = []
    monitor = DriftMonitor(reference, window=200, persist=1, on_trigger=lambda r, _: fired.append(r))
    monitor.add(records(rng, 600, p_positive=0.05))
    assert len(fired) == 1
    monitor.add(records(rng, 200))
    monitor.add(records(rng, 200, p_positive=0.05))
    assert len(fired) == 2 and "predicted_label" in fired[1]


def test_partial_windows_wait(reference):
    monitor = DriftMonitor(reference, window=100)
    assert monitor.add(records(np.random.default_rng(4), 99)) == [] and monitor.pending == 99


def test_tail_reads_complete_lines_and_follows_rotation(tmp_path):
    path = tmp_path / "predictions.jsonl"
    tail = RecordTail(path)
    assert tail.read() == []  # not there yet
    path.write_text('{"a": 1}\n{"a": 2')
    assert tail.read() == [b'{"a": 1}']
    with open(path, "a") as fh:
        fh.write('}\n{"a": 3}\n')
    assert tail.read() == [b'{"a": 2}', b'{"a": 3}']
    os.rename(path, tmp_path / "predictions.jsonl.1")
    with open(tmp_path / "predictions.jsonl.1", "a") as fh:
        fh.write('{"a": 4}\n')  # written just before the rotation
    path.write_text('{"a": 5}\n')
    assert tail.read() == [b'{"a": 4}', b'{"a": 5}']
    # truncated in place (copytruncate) and already holding fewer bytes than were read (like `tail -F`, a
    # truncation that refills past the old position before the next poll is not seen)
    path.write_text('{"a":6}\n')
    assert tail.read() == [b'{"a":6}']
    tail.close()


def test_tail_from_end_skips_existing_records(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"old": 1}\n')
    tail = RecordTail(path, from_start=False)
    assert tail.read() == []
    with open(path, "a") as fh:
        fh.write('{"new": 1}\n')
    assert tail.read() == [b'{"new": 1}']
    tail.close()


def test_reason_from_drift_watch_and_alertmanager_bodies():
    assert reason_from_body({"reason": "drift: input_tokens PSI 3.1\n> 0.2"}) == "drift: input_tokens PSI 3.1 > 0.2"
    alertmanager = {"status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "DataDrift"}, "annotations": {"summary": "drift: content PSI 0.41 > 0.2"}},
        {"status": "resolved", "labels": {"alertname": "DataDrift"}, "annotations": {"summary": "old"}}]}
    assert reason_from_body(alertmanager) == "drift: drift: content PSI 0.41 > 0.2"
    assert reason_from_body({"alerts": []}) is None and reason_from_body("x") is None
    assert reason_from_body({"reason": ""}) is None
    assert len(reason_from_body({"reason": "x" * 1000})) == 200


def test_reference_is_found_through_the_pyfunc_mlmodel(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "drift_reference.json").write_text("{}")
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n      drift_reference:\n"
                                      "        path: artifacts/drift_reference.json\n"
                                      "      model_dir:\n        path: artifacts/model\n")
    assert reference_from_pyfunc(tmp_path) == tmp_path / "artifacts" / "drift_reference.json"


def test_evidently_report_html_and_psi(tmp_path, reference, home):
    from sentimentops.steps.drift.report import report

    rng = np.random.default_rng(5)
    log = tmp_path / "predictions.jsonl"
    log.write_text("\n".join(records(rng, 400, length_mean=25)) + "\n")
    args = Namespace(records=log, last=0, out=tmp_path / "report", no_mlflow=False)
    settings = DriftSettings(home=home, mlflow_tracking_uri=f"sqlite:///{home}/mlflow.db",
                             mlflow_artifact_root=str(home / "mlartifacts"))
    assert report(args, settings, reference) == 0
    summary = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert summary["psi_evidently"]["input_tokens"] > 0.2 and summary["psi_online"]["input_tokens"] > 0.2
    assert summary["psi_evidently"]["confidence"] < 0.2 and summary["drifted"] == ["input_tokens"]
    assert summary["trusted"] is True  # 400 records: at least --min-window (drift/windows.py)
    assert (tmp_path / "report" / "drift_report.html").stat().st_size > 100_000
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["psi_input_tokens"] > 0.2
    assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} >= {"drift/drift_report.html"}


@pytest.mark.slow  # a server process: left out of `make test-fast`
def test_watch_exports_psi_on_its_own_metrics_port(tmp_path, reference):
    ref_path = tmp_path / "drift_reference.json"
    reference.write(ref_path)
    log = tmp_path / "predictions.jsonl"
    rng = np.random.default_rng(6)
    log.write_text("\n".join(records(rng, 200) + records(rng, 100, length_mean=25)) + "\n")
    port = free_port()
    out_path = tmp_path / "watch.log"
    with out_path.open("w") as out:
        proc = spawn([sys.executable, "-m", "sentimentops.steps.cli", "drift", "watch", "--records", str(log),
                      "--reference", str(ref_path), "--window", "100", "--port", str(port),
                      "--poll-seconds", "0.1", "--persist", "1", "--max-seconds", "60"],
                     stdout=out, stderr=subprocess.STDOUT)
    try:
        text, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and 'sentiment_drift_windows_total{outcome="judged"} 3.0' not in text:
            time.sleep(0.3)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
        assert 'sentiment_drift_windows_total{outcome="judged"} 3.0' in text, text
        assert 'sentiment_drift_windows_total{outcome="too_few"} 0.0' in text
        assert "sentiment_drift_last_window_records 100.0" in text
        psi = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("sentiment_drift_psi{")}
        assert set(psi) == {"input_tokens", "confidence", "predicted_label", "content"}
        assert psi["input_tokens"] > 0.2 > psi["confidence"]  # the last window is the shifted one
        assert 'sentiment_drift_triggers_total{outcome="no_webhook"} 1.0' in text
        assert "sentiment_drift_window_records 0.0" in text
    finally:
        stop(proc, grace_s=30)
    out = out_path.read_text()
    assert '"drifted": ["input_tokens"]' in out, out


def test_features_match_what_the_predictor_records():
    f = features_from_predictions([12], [0.3], [0.25])
    assert f.confidence[0] == pytest.approx(0.7) and f.predicted_label[0] == "negative"


def test_cli_is_registered():
    from sentimentops.steps import cli

    assert cli.STAGES["drift"] == "sentimentops.steps.drift.cli"
    assert Path(cli.__file__).parent.joinpath("drift", "cli.py").is_file()


def test_waiting_for_the_reference_is_bounded_and_said(tmp_path, caplog):
    """The sidecar starts with the predictor, before the model (and so the reference) is there: it waits, saying
    so, instead of exiting into a restart loop; past the bound it gives up (False)."""
    from sentimentops.steps.drift.cli import wait_for_reference

    now = [0.0]
    path = tmp_path / "drift_reference.json"
    with caplog.at_level("INFO"):
        found = wait_for_reference(path, 100, poll_s=5, say_every_s=30, sleep=lambda s: now.__setitem__(0, now[0] + s),
                                   clock=lambda: now[0])
    assert found is False and now[0] == pytest.approx(100)
    said = [r.getMessage() for r in caplog.records if "waiting for the drift reference" in r.getMessage()]
    assert 3 <= len(said) <= 5  # at the start and about every 30 s, not every poll

    def appear(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 20:
            path.write_text("{}")

    now[0] = 0.0
    assert wait_for_reference(path, 100, poll_s=5, sleep=appear,
                              clock=lambda: now[0]) is True
    assert now[0] == pytest.approx(20)


@pytest.mark.slow  # server processes: left out of `make test-fast`
def test_watch_waits_for_the_reference_the_predictor_publishes_then_gives_up_clearly(tmp_path, reference):
    folder = tmp_path / "predictions"  # the shared folder: records.jsonl and drift_reference.json
    folder.mkdir()
    ref_path, log = folder / "drift_reference.json", folder / "records.jsonl"
    port = free_port()
    out_path = tmp_path / "watch.log"
    with out_path.open("w") as out:
        proc = spawn([sys.executable, "-m", "sentimentops.steps.cli", "drift", "watch", "--records", str(log),
                      "--reference", str(ref_path), "--window", "100", "--port", str(port), "--poll-seconds", "0.1",
                      "--max-windows", "1", "--reference-wait", "120"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "waiting for the drift reference" not in out_path.read_text():
            time.sleep(0.2)
        assert "waiting for the drift reference" in out_path.read_text()
        assert proc.poll() is None  # waiting, not crashed
        rng = np.random.default_rng(7)
        log.write_text("\n".join(records(rng, 100)) + "\n")
        reference.write(ref_path)  # the predictor's model loaded
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc, grace_s=10)
    assert '"window": 0' in out_path.read_text()

    missing = run([sys.executable, "-m", "sentimentops.steps.cli", "drift", "watch", "--records", str(log),
                   "--reference", str(tmp_path / "never.json"), "--port", "0", "--poll-seconds", "0.1",
                   "--reference-wait", "1"], timeout=60)
    assert missing.returncode == 1, missing.stderr
    assert "did not appear within 1 s" in missing.stderr and "Traceback" not in missing.stderr


def test_only_the_cluster_sidecar_waits_for_the_reference_by_default():
    """Locally a missing --reference is an error at once (a typo should not hang); under the gke profile the
    sidecar waits for the predictor to publish it."""
    from sentimentops.steps.core.config import load_settings

    assert load_settings(DriftSettings, env={"SENTIMENTOPS_PROFILE": "local"}).reference_wait == 0
    assert load_settings(DriftSettings, env={"SENTIMENTOPS_PROFILE": "gke"}).reference_wait == 900
