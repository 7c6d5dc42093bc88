"""Every command README.md and docs/*.md show for local use runs here exactly as written, and does what the doc says.

Incident: the suite was green while three documented commands failed for a user: the local canary demo analysed
0 requests (the `{home}` in the default `local_dir` was never expanded, so Prometheus scraped nothing) and rolled a
healthy canary back; the runbook's "try locally" pipeline ran the cluster profile and stopped at validate; the
README's pipeline scored all 25,000 test reviews on a CPU (12+ minutes, no progress shown) and then failed in the
chained canary (`--target kserve` outside a cluster). Their tests had set the folder, the profile or the sizes
themselves.

How they run: the doc's text (continuation lines and trailing comments included) through `bash -c`, from the root
of a checkout, `sentimentops` on PATH from `.venv/bin` (a user who activated the virtualenv), a fresh HOME and the
default settings: no `SENTIMENTOPS_*` variable at all. Kept from the test environment: the offline switches and one
CPU thread per process (tests/conftest.py: under a busy second core 2 torch threads ran ~50x slower); neither is a
setting of the project.

Where: a scratch checkout. The default state folder is `.sentimentops/` in the working directory, so running in the
real checkout would read and write a user's state (`make run`'s registry) and leave runs behind. The scratch
checkout links every top-level entry of this repository except its git metadata and `.sentimentops/`, with
`../shared/data/imdb` beside it as beside the real one (the local profile's fallback data and the load generator's
reviews). The package is installed editable: the linked `steps/` and `workflows/` are the code under test, and they
find their own files through `__file__` (profiles, demo reviews, rendered templates), while the commands' relative
paths (`.sentimentops/...`, `../shared/data/...`) resolve in the scratch checkout. No `.git` link: DVC must not find
a git repository above its workspace (the recorded git SHA is still the real one: steps/core/manifests.git_sha asks
git in the folder of the package's own files, which the editable install keeps in the real checkout).

One state folder for the module, in the docs' order: the README's pipeline trains and registers the champion once
(a module fixture), and the runbook's try-out, both rollout demos and the monitoring loop reuse its MLflow registry.

Cluster commands (kubectl, argo, helm, terraform, gcloud, `cd terraform`, port-forward) are checked offline by
tests/contract/test_runbook.py and the chart and terraform contract tests.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentimentops.steps.core import processes
from sentimentops.steps.core.processes import ProcessGroups, alive, run, stop

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", *(f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md"))))
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
CLUSTER_TOOLS = {"kubectl", "argo", "helm", "terraform", "gcloud"}
STAGES = ("ingest", "validate", "version", "train", "evaluate", "register")
PIPELINE_TIMEOUT_S = 2400  # the README's pipeline: ~5 min on 2 idle cores, 11.5 min measured with the cores shared

# ---- the docs' local commands, normalised (continuations joined, comments dropped, spaces collapsed) -----------------
README_RENDER = ".venv/bin/sentimentops render --check"
RUNBOOK_RENDER = "sentimentops render --check"
RUNBOOK_CHECK = "sentimentops check charts/sentimentops/files/workflows/sentiment-training.yaml"
README_PIPELINE = (".venv/bin/sentimentops pipeline run --run-dir .sentimentops/runs/mine -p profile=local "
                   "-p source=auto -p sample-size=2300 -p test-size=500 -p epochs=1 -p batch-size=16 "
                   "-p learning-rate=2e-4 -p max-length=128 -p rollout=skip")
RUNBOOK_TRY = ("sentimentops pipeline run --run-dir .sentimentops/runs/try -p profile=local -p source=demo "
               "-p epochs=1 -p rollout=skip")
CHALLENGER = ("sentimentops pipeline run --run-dir .sentimentops/runs/challenger -p profile=local -p source=demo "
              "-p epochs=1 -p rollout=skip --env SENTIMENTOPS_REGISTER_CHAMPION_MOVES_AT=rollout")
CHALLENGER_2 = ("sentimentops pipeline run --run-dir .sentimentops/runs/challenger-2 -p profile=local "
                "-p source=demo -p epochs=1 -p seed=7 -p rollout=skip "
                "--env SENTIMENTOPS_REGISTER_CHAMPION_MOVES_AT=rollout")
LOCAL_UP = "sentimentops rollout local up --stable champion"
ROLLOUT = "sentimentops rollout run --target local --model challenger --soak 60s --interval 10s"
ROLLOUT_SLOW = f"{ROLLOUT} --canary-env SENTIMENTOPS_SERVE_FAULT_LATENCY_MS=1000"
LOCAL_DOWN = "sentimentops rollout local down"
SERVE = ("sentimentops serve --model-uri models:/sentiment@champion --prediction-log "
         ".sentimentops/predictions.jsonl &")
WEBHOOK = ("sentimentops drift webhook --run-root .sentimentops/retrains -p profile=local -p source=auto "
           "-p sample-size=2000 -p test-size=500 -p epochs=1 -p batch-size=16 -p learning-rate=1e-4 "
           "-p max-length=128 -p rollout=skip &")
WATCH = ("sentimentops drift watch --records .sentimentops/predictions.jsonl --model-uri models:/sentiment@champion "
         "--webhook-url http://127.0.0.1:12000/retrain &")
PREDICT = 'sentimentops predict --url http://127.0.0.1:8080 "A wonderful film."'
LINEAGE = "sentimentops lineage --model-version 1"
DATA_PULL = "sentimentops data pull --model-version 1 --out .sentimentops/restored"
SCORE = ("sentimentops score --input ../shared/data/imdb/sample_test.parquet "
         "--output .sentimentops/scores/imdb-test.parquet")
SCORE_SHARDED = ("sentimentops pipeline run --template charts/sentimentops/files/workflows/sentiment-batch-score.yaml "
                 "--run-dir .sentimentops/runs/batch-score -p profile=local "
                 "-p input=../shared/data/imdb/sample_test.parquet "
                 "-p output=.sentimentops/scores/imdb-test-sharded.parquet -p shards=3")

# Every local command the docs show -> the test that runs it as written. A doc command missing here fails
# test_every_local_command_in_the_docs_is_tested_as_written; so does an entry the docs no longer show.
TESTED = {
    README_RENDER: "test_render_and_check_run_as_written",
    RUNBOOK_RENDER: "test_render_and_check_run_as_written",
    RUNBOOK_CHECK: "test_render_and_check_run_as_written",
    README_PIPELINE: "test_readme_pipeline_runs_every_stage_and_registers_the_champion",
    RUNBOOK_TRY: "test_runbook_try_locally_runs_every_stage_and_registers_a_version",
    CHALLENGER: "test_rollout_demo_promotes_a_healthy_challenger",
    LOCAL_UP: "test_rollout_demo_promotes_a_healthy_challenger, test_rollout_demo_rolls_back_a_slow_canary",
    ROLLOUT: "test_rollout_demo_promotes_a_healthy_challenger",
    LOCAL_DOWN: "test_rollout_demo_promotes_a_healthy_challenger, test_rollout_demo_rolls_back_a_slow_canary",
    CHALLENGER_2: "test_rollout_demo_rolls_back_a_slow_canary",
    ROLLOUT_SLOW: "test_rollout_demo_rolls_back_a_slow_canary",
    SERVE: "test_monitoring_loop_retrains_on_drift",
    WEBHOOK: "test_monitoring_loop_retrains_on_drift",
    WATCH: "test_monitoring_loop_retrains_on_drift",
    # The runbook shows it behind a port-forward; here it asks the loop's predictor on the same 127.0.0.1:8080.
    PREDICT: "test_monitoring_loop_retrains_on_drift",
    LINEAGE: "test_lineage_and_data_pull_follow_the_readme_version_back",
    DATA_PULL: "test_lineage_and_data_pull_follow_the_readme_version_back",
    SCORE: "test_batch_scoring_runs_as_written",
    SCORE_SHARDED: "test_batch_scoring_runs_as_written",
}
# Local commands deliberately not run here, and where they are covered instead.
EXCLUDED = {
    "make run": "tests/integration/test_quickstart.py runs what it runs (`sentimentops quickstart`)",
    "make test": "the suite itself",
}


@dataclass(frozen=True)
class DocCommand:
    doc: str  # path relative to the repository
    line: int  # its first line in the doc
    text: str  # as written: continuation lines and a trailing comment included

    @property
    def key(self) -> str:
        joined = self.text.replace("\\\n", " ")
        return " ".join(re.sub(r"(^|\s)#.*$", "", joined).split())

    @property
    def cluster(self) -> bool:
        for part in re.split(r"&&|\|\||;|\|", self.key):
            words = part.split()
            if words and (words[0] in CLUSTER_TOOLS or words[:2] == ["cd", "terraform"] or "port-forward" in words):
                return True
        return False


def doc_commands() -> list[DocCommand]:
    """The commands of every fenced shell block (```bash, sh, shell, console) of README.md and docs/*.md."""
    found = []
    for doc in DOCS:
        lang: str | None = None  # None: outside a fence
        pending: list[str] = []
        start = 0
        for number, line in enumerate((REPO / doc).read_text().splitlines(), 1):
            fence = re.match(r"\s*```(\S*)", line)
            if fence:
                lang = fence.group(1).lower() if lang is None else None
                pending = []
                continue
            if lang not in SHELL_BLOCKS:
                continue
            if not pending:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                start = number
            pending.append(line.rstrip())
            if not line.rstrip().endswith("\\"):
                found.append(DocCommand(doc, start, "\n".join(pending)))
                pending = []
    return found


def as_written(key: str) -> str:
    """The doc's own text of a command in TESTED (the first place it appears)."""
    matches = [c for c in doc_commands() if c.key == key]
    assert matches, f"the docs no longer show: {key}"
    return matches[0].text


def test_every_local_command_in_the_docs_is_tested_as_written():
    commands = doc_commands()
    local = [c for c in commands if not c.cluster]
    assert len(commands) >= 30 and len(local) >= 15, [c.key for c in commands]  # the extraction found the blocks
    assert any(c.cluster and c.key.startswith("terraform -chdir=terraform init") for c in commands)
    untested = [f"{c.doc}:{c.line}: {c.key}" for c in local if c.key not in TESTED and c.key not in EXCLUDED]
    assert not untested, ("documented local commands without a test that runs them as written (add one and list it "
                          "in TESTED, or in EXCLUDED with where it is covered):\n" + "\n".join(untested))
    shown = {c.key for c in local}
    assert not (set(TESTED) | set(EXCLUDED)) - shown, "entries for commands the docs no longer show"


# ---- the scratch checkout -------------------------------------------------------------------------------------------

@dataclass
class Checkout:
    path: Path
    env: dict[str, str]
    logs: Path

    @property
    def state(self) -> Path:
        return self.path / ".sentimentops"

    def sh(self, key: str, timeout: float) -> subprocess.CompletedProcess:
        """The documented command, as written, through bash from the checkout's root; its output kept in logs/."""
        started = time.monotonic()
        done = run(["bash", "-c", as_written(key)], timeout=timeout, cwd=self.path, env=self.env)
        took = time.monotonic() - started
        name = re.sub(r"[^a-z0-9]+", "-", key.lower())[:80].strip("-")
        (self.logs / f"{name}.log").write_text(f"$ {key}\n# exit {done.returncode} after {took:.1f} s\n"
                                               f"{done.stdout}\n--- stderr ---\n{done.stderr}")
        print(f"\nDOCUMENTED-COMMAND {took:7.1f} s  exit {done.returncode}  {key}")
        return done

    def mlflow(self):
        from mlflow import MlflowClient

        uri = f"sqlite:///{self.state / 'mlflow.db'}"
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def alias(self, name: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.mlflow().get_model_version_by_alias("sentiment", name).version)
        except MlflowException:
            return None


def tail(done: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return f"exit {done.returncode}\n{done.stdout[-chars:]}\n--- stderr ---\n{done.stderr[-chars:]}"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, imdb_dir) -> Checkout:
    if not (REPO / ".venv" / "bin" / "sentimentops").is_file():
        pytest.skip("the documented commands use the virtualenv .venv (make install creates it)")
    root = tmp_path_factory.mktemp("documented")
    (root / "shared" / "data").mkdir(parents=True)
    (root / "shared" / "data" / "imdb").symlink_to(imdb_dir.resolve(), target_is_directory=True)
    path = root / "checkout"
    path.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", ".sentimentops", ".pytest_cache"}:
            (path / entry.name).symlink_to(entry)
    (root / "home").mkdir()
    (root / "logs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTIMENTOPS_")}  # the default settings
    env.update(HOME=str(root / "home"), VIRTUAL_ENV=str(path / ".venv"),
               PATH=f"{path / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}")
    return Checkout(path, env, root / "logs")


def pipeline_status(checkout: Checkout, run_dir: str) -> dict:
    status = json.loads((checkout.path / run_dir / "status.json").read_text())
    phases = {name: task["phase"] for name, task in status["tasks"].items()}
    assert status["phase"] == "Succeeded" and [phases[s] for s in STAGES] == ["Succeeded"] * 6, phases
    # The chained canary is skipped by `rollout=skip`, never failed.
    assert {p for name, p in phases.items() if name.startswith("rollout-")} <= {"Skipped", "Omitted"}, phases
    return status


def registered(checkout: Checkout, run_dir: str) -> dict:
    """register's decision.json: the version it registered, the champion after it."""
    return json.loads((checkout.path / run_dir / "register/outputs/registration/decision.json").read_text())


@pytest.fixture(scope="module")
def readme_pipeline(checkout) -> dict:
    """The README's pipeline command, once: it makes the champion the later flows start from."""
    done = checkout.sh(README_PIPELINE, timeout=PIPELINE_TIMEOUT_S)
    return {"done": done, "run_dir": ".sentimentops/runs/mine"}


# ---- README.md and docs/runbook.md -------------------------------------------------------------------------------

def test_render_and_check_run_as_written(checkout):
    for key in (README_RENDER, RUNBOOK_RENDER):
        done = checkout.sh(key, timeout=300)
        assert done.returncode == 0, tail(done)  # the committed YAML matches the Hera definition
    done = checkout.sh(RUNBOOK_CHECK, timeout=300)
    assert done.returncode == 0 and "1 file(s) checked, 0 problem(s)" in done.stdout, tail(done)


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 300)
def test_readme_pipeline_runs_every_stage_and_registers_the_champion(checkout, readme_pipeline):
    done = readme_pipeline["done"]
    assert done.returncode == 0, tail(done)
    status = pipeline_status(checkout, readme_pipeline["run_dir"])
    assert status["parameters"]["profile"] == "local" and status["parameters"]["test-size"] == "500"
    dataset = checkout.path / readme_pipeline["run_dir"] / "ingest/outputs/dataset"
    import pandas as pd

    assert len(pd.read_parquet(dataset / "test.parquet")) == 500  # evaluate scores 500 reviews, not 25,000
    decision = registered(checkout, readme_pipeline["run_dir"])
    # The first version passes the local baseline: the champion the rollout and monitoring docs start from.
    assert decision["decision"]["promote"] is True, decision
    assert checkout.alias("champion") == decision["version"] == checkout.alias("challenger")
    assert "Succeeded: all tasks done" in done.stdout + done.stderr


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 600)
def test_lineage_and_data_pull_follow_the_readme_version_back(checkout, readme_pipeline):
    """README "Following a prediction back", docs/lineage.md: version 1 (the README pipeline's) names its run, its
    dataset and a real commit; `data pull` restores the very files train read (same content hash, same DVC md5)."""
    from sentimentops.steps.core.manifests import hash_dir, read_manifest

    assert readme_pipeline["done"].returncode == 0, tail(readme_pipeline["done"])
    version = checkout.mlflow().get_model_version("sentiment", "1")
    done = checkout.sh(LINEAGE, timeout=300)
    assert done.returncode == 0, tail(done)
    assert version.run_id in done.stdout and version.tags["dataset.dvc_md5"] in done.stdout, tail(done)
    # A real commit, not `unknown`: git_sha asks git in the package's own folder, the real checkout.
    assert re.search(r"^git\s+[0-9a-f]{40}$", done.stdout, re.MULTILINE), tail(done)
    done = checkout.sh(DATA_PULL, timeout=600)
    assert done.returncode == 0, tail(done)
    assert json.loads(done.stdout.strip().splitlines()[-1])["dvc_md5"] == version.tags["dataset.dvc_md5"]
    (train_out,) = (checkout.path / readme_pipeline["run_dir"] / "train" / "outputs").iterdir()
    assert hash_dir(checkout.state / "restored") == read_manifest(train_out).inputs["dataset"]


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 1200)
def test_batch_scoring_runs_as_written(checkout, readme_pipeline):
    """docs/batch-scoring.md: the champion scores the IMDB sample in one process and in 3 shards through the
    batch-score WorkflowTemplate run locally; both give the same 1,000 answers, in input order, from one version."""
    import pandas as pd

    assert readme_pipeline["done"].returncode == 0, tail(readme_pipeline["done"])
    champion = checkout.alias("champion")
    outputs = []
    for key, name in ((SCORE, "imdb-test.parquet"), (SCORE_SHARDED, "imdb-test-sharded.parquet")):
        done = checkout.sh(key, timeout=900)
        assert done.returncode == 0, tail(done)
        scored = pd.read_parquet(checkout.state / "scores" / name)
        assert len(scored) == 1000 and set(scored["model_version"]) == {champion}, scored.head()
        outputs.append(scored)
    status = json.loads((checkout.state / "runs/batch-score/status.json").read_text())
    assert status["phase"] == "Succeeded" and {f"score({i})" for i in range(3)} <= set(status["tasks"]), status
    one, sharded = outputs
    ids = pd.read_parquet(checkout.path / "../shared/data/imdb/sample_test.parquet")["id"].tolist()
    assert one["id"].tolist() == sharded["id"].tolist() == ids  # the input's own ids, in input order
    # the same answers whatever the sharding: shards are whole blocks of rows, so the int8 export's batch-wide
    # activation scales see the same batch-mates (steps/score/core.py BLOCK)
    assert one["label"].tolist() == sharded["label"].tolist()
    assert (one["probability"] - sharded["probability"]).abs().max() < 1e-6


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 900)
def test_runbook_try_locally_runs_every_stage_and_registers_a_version(checkout, readme_pipeline):
    done = checkout.sh(RUNBOOK_TRY, timeout=1200)
    assert done.returncode == 0, tail(done)
    status = pipeline_status(checkout, ".sentimentops/runs/try")
    assert status["parameters"]["profile"] == "local" and status["parameters"]["source"] == "demo"
    version = registered(checkout, ".sentimentops/runs/try")["version"]
    assert checkout.mlflow().get_model_version("sentiment", version).tags["run.reason"] == "manual"
    assert checkout.alias("challenger") == version


# ---- docs/rollout.md: the local canary -------------------------------------------------------------------------

def http_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


def wait_for(condition, timeout_s: float, what: str):
    """sentimentops.steps.core.processes.wait_for over a condition that cannot be answered yet while a server is not listening or a
    file is half-written (those count as not yet)."""
    def check():
        try:
            return condition()
        except (OSError, ValueError):
            return None

    return processes.wait_for(check, timeout_s, what, poll_s=0.5)


@pytest.fixture()
def deployment(checkout):
    """The local deployment `rollout local up` starts (processes in sessions of their own) is ended after the test:
    by the doc's own `local down`, then each recorded process group by pid, whatever the test left."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus (Debian package) is not installed: apt-get install -y prometheus")
    folder = checkout.state / "rollout" / "local"
    yield folder
    if (folder / "state.json").is_file() and any(alive(pid) for pid in recorded_pids(folder)):
        checkout.sh(LOCAL_DOWN, timeout=180)
    if (folder / "state.json").is_file():
        for pid in recorded_pids(folder):
            stop(pid)


def recorded_pids(folder: Path) -> list[int]:
    data = json.loads((folder / "state.json").read_text())
    pids = [data[role]["pid"] for role in ("stable", "canary", "router", "prometheus") if data.get(role)]
    return pids + list(data.get("retired", [])) + [p["pid"] for p in data.get("pending", [])]


def local_up(checkout: Checkout, folder: Path) -> dict:
    """`rollout local up --stable champion` as written; the deployment lives in the default folder, and
    Prometheus, reading the targets file by the path its config names, scrapes the stable predictor."""
    champion = checkout.alias("champion")
    done = checkout.sh(LOCAL_UP, timeout=300)
    assert done.returncode == 0, tail(done)
    assert f"local stable version {champion}:" in done.stdout, tail(done)
    assert not (checkout.path / "{home}").exists()  # the incident: a literal {home}/ folder in the working dir
    assert (folder / "state.json").is_file()  # the default local_dir, {home}/rollout/local, in the state folder
    config = (folder / "prometheus.yml").read_text()
    (targets,) = re.findall(r"files: \[(.*)\]", config)
    assert Path(json.loads(targets)).resolve() == (folder / "targets.json").resolve(), config
    assert (folder / "targets.json").is_file()
    data = json.loads((folder / "state.json").read_text())
    query = urllib.parse.urlencode({"query": 'up{job="sentiment-local",role="stable"} == 1'})
    wait_for(lambda: http_json(f"{data['prometheus']['url']}/api/v1/query?{query}")["data"]["result"], 60,
             "Prometheus scraping the stable predictor")
    return data


def local_down(checkout: Checkout, folder: Path) -> None:
    pids = recorded_pids(folder)
    done = checkout.sh(LOCAL_DOWN, timeout=180)
    assert done.returncode == 0 and "stopped" in done.stdout, tail(done)
    wait_for(lambda: not any(alive(pid) for pid in pids), 60, f"the local deployment's processes {pids} ending")


def load_sent(done: subprocess.CompletedProcess) -> dict:
    """What the load generator reports having sent during the soak (the controller prints it)."""
    (summary,) = re.findall(r"^rollout: local load during the soak: (\{.*\})$", done.stdout, re.MULTILINE)
    return ast.literal_eval(summary)


def assert_analysis_saw_the_load(final: dict, load: dict) -> None:
    """The incident's check: the analysis judged the requests the load generator sent (it had judged 0 while 1,102
    were sent). Each side's count is non-zero, at most what was sent (increase() extrapolates a little), most of it
    when the judgement covered the canary's whole life, and the canary's share is the share the router gave it."""
    seen = {role: final[role]["requests"] for role in ("canary", "stable")}
    sent = {role: load["backends"].get(role, 0) for role in ("canary", "stable")}
    whole_life = final["window_s"] >= 0.9 * final["elapsed_s"]
    for role, count in seen.items():
        assert sent[role] > 0 and count > 0, (seen, sent)
        assert count <= 1.1 * sent[role] + 5, (role, seen, sent)
        if whole_life:
            assert count >= 0.6 * sent[role], (role, seen, sent)
    share_seen = seen["canary"] / (seen["canary"] + seen["stable"])
    share_sent = sent["canary"] / (sent["canary"] + sent["stable"])
    # three binomial standard deviations of the observed share, plus the edges of the window
    tolerance = 3 * math.sqrt(share_sent * (1 - share_sent) / (seen["canary"] + seen["stable"])) + 0.02
    assert abs(share_seen - share_sent) <= tolerance, (seen, sent)


def challenger(checkout: Checkout, key: str, run_dir: str) -> str:
    """A challenger pipeline as written: a new version, alias `challenger`; `champion` is left to the canary."""
    champion = checkout.alias("champion")
    done = checkout.sh(key, timeout=1200)
    assert done.returncode == 0, tail(done)
    pipeline_status(checkout, run_dir)
    version = registered(checkout, run_dir)["version"]
    assert checkout.alias("challenger") == version != champion and checkout.alias("champion") == champion
    return version


def rollout_evidence(checkout: Checkout, version: str) -> dict:
    tags = checkout.mlflow().get_model_version("sentiment", version).tags
    return {"tags": tags, "final": json.loads(tags["rollout.evidence"])["final"]}


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 1500)
def test_rollout_demo_promotes_a_healthy_challenger(checkout, readme_pipeline, deployment):
    version = challenger(checkout, CHALLENGER, ".sentimentops/runs/challenger")
    stable = checkout.alias("champion")
    local_up(checkout, deployment)
    done = checkout.sh(ROLLOUT, timeout=600)
    assert done.returncode == 0, tail(done)
    assert f"rollout: version {version}: promoted (promote: soak of 60 s passed" in done.stdout, tail(done)
    record = rollout_evidence(checkout, version)
    assert record["tags"]["rollout.decision"] == "promote" and record["tags"]["rollout.champion"] == "moved"
    assert record["tags"]["rollout.stable_version"] == stable
    load = load_sent(done)
    assert set(load["statuses"]) == {"200"}, load
    assert_analysis_saw_the_load(record["final"], load)
    assert checkout.alias("champion") == version
    events = [json.loads(line)["reason"] for line in (deployment / "events.jsonl").read_text().splitlines()]
    assert events[-2:] == ["CanaryDeployed", "CanaryPromoted"]
    local_down(checkout, deployment)


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 1500)
def test_rollout_demo_rolls_back_a_slow_canary(checkout, readme_pipeline, deployment):
    version = challenger(checkout, CHALLENGER_2, ".sentimentops/runs/challenger-2")
    stable = checkout.alias("champion")
    local_up(checkout, deployment)
    done = checkout.sh(ROLLOUT_SLOW, timeout=600)
    assert done.returncode == 0, tail(done)
    assert f"rollout: version {version}: rolled-back (rollback:" in done.stdout, tail(done)
    record = rollout_evidence(checkout, version)
    assert record["tags"]["rollout.decision"] == "rollback" and record["tags"]["rollout.champion"] == "untouched"
    assert "canary p99" in record["tags"]["rollout.reason"], record["tags"]["rollout.reason"]
    latency = {c["name"]: c for c in record["final"]["checks"]}["latency_p99"]
    assert latency["status"] == "fail" and latency["value"] > 0.1, latency
    assert_analysis_saw_the_load(record["final"], load_sent(done))
    assert checkout.alias("champion") == stable
    events = [json.loads(line)["reason"] for line in (deployment / "events.jsonl").read_text().splitlines()]
    assert events[-2:] == ["CanaryDeployed", "CanaryRolledBack"]
    local_down(checkout, deployment)


# ---- docs/monitoring.md: the drift loop on one machine (last: its retrain is stopped mid-run) ---------------------

LOOP_PORTS = {8080: "sentimentops serve (the local profile's port)", 12000: "sentimentops drift webhook",
              9108: "sentimentops drift watch's /metrics"}


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(PIPELINE_TIMEOUT_S + 600)
def test_monitoring_loop_retrains_on_drift(checkout, readme_pipeline):
    taken = [f"{port} ({what})" for port, what in LOOP_PORTS.items() if port_taken(port)]
    assert not taken, f"another process holds the ports the documented loop binds: {taken}"
    champion = checkout.alias("champion")
    assert champion, "no champion: the README's pipeline makes it"
    block = "\n".join(as_written(key) for key in (SERVE, WEBHOOK, WATCH))
    retrains: list[int] = []
    with (checkout.logs / "monitoring-loop.log").open("w") as log, ProcessGroups(grace_s=45) as groups:
        # The three background jobs stay in bash's process group: stopping it ends all three, and the webhook its
        # running retrain (its own group; stopped again below by pid in case the webhook could not).
        groups.start(["bash", "-c", block], cwd=checkout.path, env=checkout.env, stdout=log,
                     stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: http_json("http://127.0.0.1:8080/v2/health/ready"), 180, "the predictor ready")
            wait_for(lambda: http_json("http://127.0.0.1:12000/runs") == {"runs": []}, 60, "the webhook listening")
            wait_for(lambda: urllib.request.urlopen("http://127.0.0.1:9108/metrics", timeout=5).status == 200, 60,
                     "the drift monitor's /metrics")
            # The runbook's check of what is served, against this predictor on the port it names.
            done = checkout.sh(PREDICT, timeout=120)
            assert done.returncode == 0, tail(done)
            assert re.search(rf"^\s*(positive|negative)\s+p\(positive\)=\d\.\d{{3}}\s+sentiment v{champion}\s",
                             done.stdout, re.MULTILINE), tail(done)
            # Drift: one-line reviews against the IMDB reference, two windows of 500 predictions.
            texts = [f"Great film, number {i}." if i % 2 else f"Awful, number {i}." for i in range(1100)]
            for i in range(0, len(texts), 50):
                request = urllib.request.Request(
                    "http://127.0.0.1:8080/v1/models/sentiment:predict", method="POST",
                    data=json.dumps({"instances": texts[i:i + 50]}).encode(),
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as answer:
                    assert answer.status == 200
            records = (checkout.state / "predictions.jsonl").read_text().splitlines()
            assert len(records) >= 1100 and "text" not in json.loads(records[-1])  # no raw text by default
            (started,) = wait_for(lambda: http_json("http://127.0.0.1:12000/runs")["runs"], 120,
                                  "the drift monitor's POST starting a retrain")
            retrains.append(started["pid"])
            assert re.match(r"drift: .*PSI \d+\.\d+.* > 0\.2 for 2 window\(s\) of 500 \(model \d+\)$",
                            started["reason"]), started
            metrics = urllib.request.urlopen("http://127.0.0.1:9108/metrics", timeout=5).read().decode()
            assert re.search(r'^sentiment_drift_triggers_total\{outcome="sent"\} 1\.0$', metrics, re.MULTILINE)
            # The retrain runs the documented parameters, sized like `make run`, with the drift reason.
            run_dir = checkout.path / started["run_dir"]
            status = wait_for(lambda: json.loads((run_dir / "status.json").read_text()), 120,
                              "the retrain's runner writing status.json")
            params = status["parameters"]
            assert (params["profile"], params["sample-size"], params["test-size"], params["rollout"]) == \
                ("local", "2000", "500", "skip"), params
            assert params["reason"] == started["reason"]
        finally:
            groups.stop_all()
            for pid in retrains:
                stop(pid)
    assert not any(port_taken(port) for port in LOOP_PORTS), "a documented loop process outlived its stop"
