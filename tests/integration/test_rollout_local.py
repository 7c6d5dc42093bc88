"""The canary rollout end to end on this machine, with a real Prometheus (Debian) scraping two real predictors
behind the weighted router, real MLflow (sqlite) and the same analysis and policy code the cluster runs:

- a healthy canary is promoted (champion moves);
- a canary answering +150 ms slower is rolled back (champion stays);
- a canary answering 5% of requests with 500 is rolled back;
- the controller killed (SIGKILL) mid-soak, between the patch and the decision, then re-run: one consistent end;
- with mirroring on, the router's comparisons reach Prometheus and the decision's evidence (the agreement check).

The soak is 60 s at a 10 s interval (the runbook's 30 minutes is a flag); the load is 30 requests/s of IMDB test
reviews to 127.0.0.1 only, bounded by the soak. Assertions are on decisions and recorded evidence, never on timing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sentimentops.steps.core.processes import run, spawn, stop, wait_for

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
REPO = Path(__file__).resolve().parents[2]
SOAK = ["--soak", "60s", "--interval", "10s", "--load-rps", "30", "--seed", "7", "--ready-timeout", "180s"]
VERSIONS = {"stable": "1", "healthy": "2", "slow": "3", "errors": "4", "crash": "5", "mirrored": "6"}

if shutil.which("prometheus") is None:
    pytest.skip("prometheus (Debian package) is not installed: apt-get install -y prometheus",
                allow_module_level=True)


def register_versions(home: Path, model_dirs: list[Path]) -> None:
    """Registers each tiny model through the register stage's own code (pyfunc + lineage tags), as the pipeline
    does; `champion_moves_at: rollout` (the gke setting) so only the rollout moves champion."""
    from sentimentops.steps.core.manifests import write_manifest
    from sentimentops.steps.core.tracking import configure, mlflow_run
    from sentimentops.steps.register.cli import RegisterSettings, register

    settings = RegisterSettings(home=home, mlflow_tracking_uri=f"sqlite:///{home}/mlflow.db",
                                mlflow_artifact_root=str(home / "mlartifacts"), champion_moves_at="rollout",
                                baseline_accuracy=0.0)
    for i, model_dir in enumerate(model_dirs):
        root = home.parent / f"reg-{i}"
        model_out, evaluation, version_out = root / "train", root / "evaluate", root / "version"
        shutil.copytree(model_dir, model_out / "model")
        with mlflow_run(settings, run_name=f"tiny-{i}") as run:
            run_id = run.info.run_id
        write_manifest(model_out, "train", refs={"mlflow_run_id": run_id})
        write_manifest(version_out, "version", refs={"dvc_md5": f"md5-{i}"})
        write_manifest(evaluation, "evaluate", refs={"mlflow_run_id": run_id},
                       metrics={"test_accuracy": 0.5 + i / 100, "test_f1": 0.5, "test_roc_auc": 0.5})
        register(model_out, evaluation, version_out, settings)
    configure(settings).set_registered_model_alias("sentiment", "champion", "1")


@pytest.fixture(scope="module")
def env(tmp_path_factory, imdb_dir) -> dict:
    import pandas as pd

    from tests.conftest import build_tiny_distilbert

    root = tmp_path_factory.mktemp("rollout")
    home = root / "home"
    texts = pd.read_parquet(imdb_dir / "sample_train.parquet")["text"].head(300).tolist()
    models = [build_tiny_distilbert(root / f"tiny-{v}", texts, seed=int(v)) for v in VERSIONS.values()]
    old = {k: os.environ.get(k) for k in ("SENTIMENTOPS_HOME", "SENTIMENTOPS_PROFILE", "SENTIMENTOPS_EXPORT_ENABLED")}
    os.environ.update({"SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_PROFILE": "local",
                       # The ONNX fast path is the serving tests' business; these predictors run torch (1 thread).
                       "SENTIMENTOPS_EXPORT_ENABLED": "false"})
    try:
        register_versions(home, models)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {"home": home, "root": root, "source": str(imdb_dir / "sample_test.parquet"),
            "env": {**os.environ, "SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_PROFILE": "local",
                    "SENTIMENTOPS_SERVE_BACKEND": "torch", "SENTIMENTOPS_SERVE_THREADS": "1",
                    "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}}


def client(env):
    from mlflow import MlflowClient

    uri = f"sqlite:///{env['home']}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def cli(env, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    done = run([CLI, "rollout", *args], timeout=timeout, env=env["env"], cwd=REPO)  # a time-out ends its group
    assert "Traceback" not in done.stdout + done.stderr, done.stdout[-4000:] + done.stderr[-4000:]
    return done


@pytest.fixture()
def local(env, request):
    """A fresh local deployment (stable = version 1) per test, stopped afterwards."""
    folder = env["root"] / f"local-{request.node.name}"
    client(env).set_registered_model_alias("sentiment", "champion", "1")
    up = cli(env, "local", "up", "--stable", "1", "--local-dir", str(folder), timeout=240)
    assert up.returncode == 0, up.stdout + up.stderr
    yield folder
    cli(env, "local", "down", "--local-dir", str(folder), timeout=120)
    data = local_state(folder)  # whatever `local down` could not end: each process leads its own group
    for pid in [data[r]["pid"] for r in ("stable", "canary", "router", "prometheus") if data.get(r)] + \
            data.get("retired", []) + [p["pid"] for p in data.get("pending", [])]:
        stop(pid)


def rollout(env, folder: Path, version: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = cli(env, "run", "--target", "local", "--model", version, "--local-dir", str(folder),
               "--load-source", env["source"], "--out", str(out), *SOAK, *extra)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def evidence(env, version: str) -> dict:
    mv = client(env).get_model_version("sentiment", version)
    tags = mv.tags
    run = client(env).get_run(mv.run_id)
    final = json.loads(tags["rollout.evidence"])["final"]
    summary = {"version": version, "decision": tags["rollout.decision"], "decision_s": tags["rollout.decision_s"],
               "reason": tags["rollout.reason"], "champion": tags.get("rollout.champion"),
               "canary": final["canary"] if final else None, "stable": final["stable"] if final else None}
    print(f"\nROLLOUT-EVIDENCE {json.dumps(summary)}")
    assert run.data.tags["rollout.decision"] == tags["rollout.decision"]  # on the training run too
    artifacts = [a.path for a in client(env).list_artifacts(mv.run_id, "rollout")]
    assert f"rollout/v{version}-{tags['rollout.decision']}.json" in artifacts
    return {"tags": tags, "final": final}


def events(folder: Path) -> list[str]:
    return [json.loads(line)["reason"] for line in (folder / "events.jsonl").read_text().splitlines()]


def local_state(folder: Path) -> dict:
    return json.loads((folder / "state.json").read_text())


def test_healthy_canary_is_promoted(env, local, tmp_path):
    version = VERSIONS["healthy"]
    rollout(env, local, version, tmp_path / "out")
    assert (tmp_path / "out" / "decision").read_text() == "promote"
    record = evidence(env, version)
    assert record["tags"]["rollout.state"] == "promoted" and record["tags"]["rollout.champion"] == "moved"
    assert record["final"]["canary"]["requests"] >= 20 and record["final"]["canary"]["errors"] == 0
    assert {c["name"]: c["status"] for c in record["final"]["checks"]}["error_ratio"] == "pass"
    assert str(client(env).get_model_version_by_alias("sentiment", "champion").version) == version
    state = local_state(local)
    assert state["stable"]["version"] == version and state["canary"] is None
    assert state["routes"]["canary"] is None
    assert events(local) == ["CanaryDeployed", "CanaryPromoted"]
    # The candidate is where register said it is: the version's `storage_uri` tag (locally the download URI).
    tags = record["tags"]
    assert tags["storage_uri"] == client(env).get_model_version_download_uri("sentiment", version)
    assert state["rollout"]["sentimentops.io/rollout-candidate-uri"] == tags["storage_uri"]


def test_slow_canary_is_rolled_back(env, local, tmp_path):
    version = VERSIONS["slow"]
    rollout(env, local, version, tmp_path / "out", "--canary-env", "SENTIMENTOPS_SERVE_FAULT_LATENCY_MS=150")
    assert (tmp_path / "out" / "decision").read_text() == "rollback"
    record = evidence(env, version)
    assert "canary p99" in record["tags"]["rollout.reason"]
    assert record["tags"]["rollout.champion"] == "untouched"
    assert str(client(env).get_model_version_by_alias("sentiment", "champion").version) == "1"
    state = local_state(local)
    assert state["stable"]["version"] == "1" and state["canary"] is None
    assert events(local) == ["CanaryDeployed", "CanaryRolledBack"]


def test_canary_with_5_percent_errors_is_rolled_back(env, local, tmp_path):
    version = VERSIONS["errors"]
    rollout(env, local, version, tmp_path / "out", "--canary-env", "SENTIMENTOPS_SERVE_FAULT_ERROR_RATE=0.05",
            "--canary-env", "SENTIMENTOPS_SERVE_FAULT_SEED=7")
    assert (tmp_path / "out" / "decision").read_text() == "rollback"
    record = evidence(env, version)
    assert "canary 5xx" in record["tags"]["rollout.reason"]
    assert str(client(env).get_model_version_by_alias("sentiment", "champion").version) == "1"
    assert local_state(local)["canary"] is None


def test_crash_between_patch_and_decision_then_rerun_is_consistent(env, local, tmp_path):
    version = VERSIONS["crash"]
    argv = [CLI, "rollout", "run", "--target", "local", "--model", version, "--local-dir", str(local),
            "--load-source", env["source"], *SOAK]
    log = tmp_path / "first-run.log"
    with log.open("w") as out:  # a file, never an unread pipe
        first = spawn(argv, env=env["env"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    first.log = log
    try:
        # Wait for the patch (the canary deployed and recorded) and a first interval analysis (it continued: no
        # decision yet, the soak is 60 s), then kill the controller mid-soak.
        wait_for(lambda: (local_state(local).get("rollout") or {}).get("sentimentops.io/rollout-phase") == "canary",
                 300, "the canary recorded", [first])
        wait_for(lambda: "analysis at " in log.read_text(), 120, "a first analysis", [first])
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first, grace_s=5)  # the controller's whole group, whatever happened above
    crashed = local_state(local)
    assert crashed["rollout"]["sentimentops.io/rollout-phase"] == "canary"
    assert crashed["canary"]["version"] == version and crashed["routes"]["canary_percent"] == 10
    assert "rollout.decision" not in client(env).get_model_version("sentiment", version).tags
    # The re-run resumes the same canary (no second deploy) and the soak from its recorded start.
    rollout(env, local, version, tmp_path / "out")
    assert (tmp_path / "out" / "decision").read_text() == "promote"
    state = local_state(local)
    assert state["rollout"]["sentimentops.io/rollout-started"] == crashed["rollout"]["sentimentops.io/rollout-started"]
    assert state["stable"]["pid"] == crashed["canary"]["pid"]  # the very canary process now serves
    assert state["canary"] is None and state["retired"] == []
    assert events(local) == ["CanaryDeployed", "CanaryPromoted"]
    record = evidence(env, version)
    assert float(record["tags"]["rollout.decision_s"]) >= 60
    assert str(client(env).get_model_version_by_alias("sentiment", "champion").version) == version
    # And a third run changes nothing.
    again = rollout(env, local, version, tmp_path / "again")
    assert "already promoted" in again.stderr  # a controller log line (stderr); stdout holds only results
    assert local_state(local)["stable"] == state["stable"]


def test_mirrored_requests_are_compared_and_recorded(env, local, tmp_path):
    """Every request also goes to the other deployment; the router's counts, scraped on its own metrics path, are
    judged as agreement. The tiny models' answers are the seeds' business, so the bar is lowered to 0: what is
    proven here is the path from the router to the recorded evidence, and that one judged quality check satisfies
    require_quality (feedback labels: none in this soak)."""
    version = VERSIONS["mirrored"]
    # Latency is the other tests' business: every request now costs both predictors, on shared cores.
    policy = '{"min_mirrored": 20, "min_agreement": 0.0, "require_quality": true, "max_p99_increase_s": 10}'
    done = rollout(env, local, version, tmp_path / "out", "--mirror-percent", "100", "--policy", policy,
                   "--load-rps", "15")
    assert (tmp_path / "out" / "decision").read_text() == "promote", done.stdout[-2000:]
    record = evidence(env, version)
    final = record["final"]
    checks = {c["name"]: c for c in final["checks"]}
    assert checks["agreement"]["status"] == "pass", checks["agreement"]
    assert checks["feedback_accuracy"]["status"] == "no_data"
    # about one comparison per request the load sent, whichever side served it; each predictor's own count holds
    # the requests it served plus the copies it answered (increase() extrapolates each series a little)
    assert final["mirrored"]["total"] >= 20 and 0 <= final["mirrored"]["agreement"] <= 1
    assert final["mirrored"]["total"] <= final["canary"]["requests"] + final["stable"]["requests"]
    assert "mirrored requests" in record["tags"]["rollout.reason"]
