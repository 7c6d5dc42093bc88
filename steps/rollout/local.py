"""The local target: the cluster's moving parts as processes on 127.0.0.1, for demos and tests.

  stable predictor  `sentimentops serve --model-uri models:/sentiment/N --port P1`
  canary predictor  the same for the candidate, on P2 (fault injection through its environment, tests only)
  router            sentimentops.steps.rollout.router: canary_percent of requests to the canary (KServe's traffic split),
                    mirror_percent of predict requests copied to the other deployment (agreement), feedback
                    by request id to the deployment that answered it
  Prometheus        from Debian, a temp config scraping both predictors every second with the target labels
                    model_version and role (what the ServiceMonitor's relabelling gives in the cluster), and the
                    router's own /_router/metrics (role router: the mirrored comparisons)

Everything is recorded in one JSON state file (replaced atomically): processes, routes (the router re-reads them),
and `rollout` (the same sentimentops.io/rollout-* keys the InferenceService carries), so a crashed controller
leaves a consistent picture for the next run. The processes run in their own sessions: they are the
"deployment" and outlive the controller; `sentimentops rollout local down` stops them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sentimentops.steps.core.client import free_port, sentimentops
from sentimentops.steps.core.logs import emit
from sentimentops.steps.core.processes import alive, spawn, stop
from sentimentops.steps.rollout.analysis import MIRROR_METRIC, Prometheus, PrometheusError
from sentimentops.steps.rollout.load import LoadGenerator, load_reviews
from sentimentops.steps.rollout.state import RolloutState, now_iso

PROMETHEUS_CONFIG = """global:
  scrape_interval: {scrape}
  evaluation_interval: {scrape}
scrape_configs:
  - job_name: sentiment-local
    metrics_path: /metrics
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


@dataclass
class LocalTarget:
    folder: Path  # holds state.json, targets.json, logs, the Prometheus TSDB
    registered_model: str = "sentiment"
    canary_env: dict[str, str] = field(default_factory=dict)  # e.g. fault injection for the canary only
    load_rps: float = 20.0
    load_source: Path | None = None
    seed: int = 0
    mirror_percent: int = 0  # share of predict requests the router also sends to the other deployment
    kind: str = "local"

    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    # ---- the JSON state ----------------------------------------------------------------------------------------
    def read(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}

    def write(self, data: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)  # the router and a re-run never see half a file
        self._write_targets(data)

    def _write_targets(self, data: dict) -> None:
        groups = [{"targets": [f"127.0.0.1:{data[role]['port']}"],
                   "labels": {"model_version": data[role]["version"], "role": role}}
                  for role in ("stable", "canary") if data.get(role)]
        if data.get("router"):  # its own path: the router proxies /metrics like any other request
            groups.append({"targets": [f"127.0.0.1:{data['router']['port']}"],
                           "labels": {"role": "router", "__metrics_path__": "/_router/metrics"}})
        tmp = self.folder / "targets.json.tmp"
        tmp.write_text(json.dumps(groups, indent=2) + "\n")
        os.replace(tmp, self.folder / "targets.json")

    # ---- processes ---------------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = (self.folder / f"{name}.log").open("ab")
        child_env = {**os.environ, "OMP_NUM_THREADS": "1", "SENTIMENTOPS_SERVE_THREADS": "1", **(env or {})}
        proc = spawn(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        log.close()
        return proc.pid

    def _predictor(self, role: str, version: str, env: dict[str, str] | None = None) -> dict:
        port = free_port()
        pid = self._spawn(f"{role}-v{version}", [sentimentops(), "serve", "--model-uri",
                                                 f"models:/{self.registered_model}/{version}", "--port", str(port)],
                          {"SENTIMENTOPS_MODEL_VERSION": version, **(env or {})})
        return {"version": version, "port": port, "pid": pid, "url": f"http://127.0.0.1:{port}"}

    def up(self, stable_version: str, timeout_s: float = 120.0) -> dict:
        """Start the stable predictor, the router and Prometheus (idempotent: running parts are kept)."""
        data = self.read()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (data.get("stable") and alive(data["stable"]["pid"])):
            data["stable"] = self._predictor("stable", stable_version)
        if not (data.get("router") and alive(data["router"]["pid"])):
            port = free_port()
            data["router"] = {"port": port, "url": f"http://127.0.0.1:{port}", "pid": self._spawn(
                "router", [sys.executable, "-m", "sentimentops.steps.rollout.router", "--port", str(port),
                           "--state", str(self.state_file), "--seed", str(self.seed)])}
        if not (data.get("prometheus") and alive(data["prometheus"]["pid"])):
            data["prometheus"] = self._prometheus()
        data.setdefault("canary", None)
        data["routes"] = self._routes(data)
        self.write(data)
        deadline = time.monotonic() + timeout_s
        checks = {"stable": f"{data['stable']['url']}/v2/health/ready",
                  "router": f"{data['router']['url']}/_router/health",
                  "prometheus": f"{data['prometheus']['url']}/-/ready"}
        for name, url in checks.items():
            while not http_ok(url):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"local {name} not ready after {timeout_s:.0f} s; see {self.folder}/*.log")
                time.sleep(0.5)
        return data

    def _routes(self, data: dict, percent: int | None = None) -> dict:
        """What the router reads: the two URLs, their versions (the mirror counter's labels) and both shares;
        `percent` None: no canary. A canary at 0% with mirroring on sees only the copies (a shadow)."""
        canary = data.get("canary") if percent is not None else None
        return {"stable": data["stable"]["url"], "stable_version": data["stable"]["version"],
                "canary": canary["url"] if canary else None, "canary_version": canary["version"] if canary else None,
                "canary_percent": percent if canary else 0, "mirror_percent": self.mirror_percent if canary else 0}

    def _prometheus(self) -> dict:
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus not found: apt-get install -y prometheus (Debian)")
        port = free_port()
        config = self.folder / "prometheus.yml"
        config.write_text(PROMETHEUS_CONFIG.format(scrape="1s", targets=json.dumps(str(self.folder /
                                                                                       "targets.json"))))
        argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={self.folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"]
        return {"port": port, "url": f"http://127.0.0.1:{port}", "pid": self._spawn("prometheus", argv)}

    def down(self) -> None:
        data = self.read()
        for role in ("canary", "stable", "router", "prometheus"):
            if data.get(role):
                stop(data[role]["pid"])
        for pid in data.get("retired", []) + [p.get("pid") for p in data.get("pending", [])]:
            stop(pid)

    def prometheus_url(self) -> str:
        return self.read()["prometheus"]["url"]

    def router_url(self) -> str:
        return self.read()["router"]["url"]

    # ---- the Target protocol -----------------------------------------------------------------------------------
    def load_state(self) -> RolloutState | None:
        return RolloutState.from_annotations(self.read().get("rollout"))

    def save(self, state: RolloutState) -> None:
        data = self.read()
        data["rollout"] = state.to_annotations()
        self.write(data)

    def stable(self) -> tuple[str, str]:
        stable = self.read().get("stable") or {}
        version = stable.get("version", "")
        return version, f"models:/{self.registered_model}/{version}" if version else ""

    def deploy(self, state: RolloutState) -> RolloutState:
        data = self.read()
        if not data.get("stable"):
            raise RuntimeError("no local stable deployment: run `sentimentops rollout local up` first")
        for orphan in data.pop("pending", []):  # started by a run that crashed before recording it
            stop(orphan["pid"])
        if data.get("canary"):  # an older canary without a rollout record: retire it
            data.setdefault("retired", []).append(data["canary"]["pid"])
        canary = self._predictor("canary", state.candidate_version, self.canary_env)
        # Recorded as pending at once, so a crash before the next write leaves no untracked process.
        data.setdefault("pending", []).append(canary)
        self.write(data)
        data["pending"] = [p for p in data["pending"] if p["pid"] != canary["pid"]]
        data["canary"] = canary
        # No traffic before the canary is ready (KServe routes to a revision only once it is Ready): the router
        # would otherwise send its share to a process still loading its model (refused, or 503). ready() routes it.
        data["canary_percent"] = state.percent
        data["routes"] = self._routes(data)
        data["rollout"] = state.to_annotations()
        self.write(data)  # the canary, its traffic share and the record of both: one atomic replace
        return state

    def ready(self) -> tuple[bool, str]:
        data = self.read()
        canary = data.get("canary")
        if not canary:
            return False, "no canary deployed"
        if not alive(canary["pid"]):
            return False, f"canary process {canary['pid']} exited; see {self.folder}/canary-v{canary['version']}.log"
        if not http_ok(f"{canary['url']}/v2/health/ready"):
            return False, "canary not ready yet"
        # The soak's load starts once this says ready: Prometheus must hold a sample of both predictors' zero
        # counters first, or requests served before the first scrape never show in increase() (issue 10).
        for role in ("stable", "canary"):
            if not self.scraped(role, data[role]["version"]):
                return False, f"Prometheus has not scraped the {role} predictor yet"
        if (data.get("routes") or {}).get("canary") != canary["url"]:
            # ready and scraped: now the router may send it its share (and mirror copies, whose zeroed counter
            # Prometheus must then hold before the soak: the check below, at the next call)
            data["routes"] = self._routes(data, int(data.get("canary_percent", 0)))
            self.write(data)
            return False, "the canary's traffic share routed; waiting for the router's counters to be scraped"
        if (data.get("routes") or {}).get("mirror_percent") and not self.scraped_mirror(
                data["stable"]["version"], canary["version"]):
            return False, "Prometheus has not scraped the router's mirror counter for these versions yet"
        return True, "ready"

    def scraped_mirror(self, stable: str, canary: str) -> bool:
        """The router's zeroed mirror series for this pair of versions is stored (the same reason as above)."""
        series = f'{MIRROR_METRIC}_total{{job="sentiment-local",stable="{stable}",canary="{canary}",agree="true"}}'
        try:
            return Prometheus(self.prometheus_url()).query(f"count({series})") is not None
        except PrometheusError:
            return False

    def scraped(self, role: str, version: str) -> bool:
        """Prometheus has scraped this predictor at least once (its zero-initialised request counter is stored)."""
        series = (f'sentiment_requests_total{{job="sentiment-local",role="{role}",model_version="{version}",'
                  f'status="200"}}')
        try:
            return Prometheus(self.prometheus_url()).query(f"count({series})") is not None
        except PrometheusError:
            return False

    def promote(self, state: RolloutState) -> None:
        data = self.read()
        old, canary = data.get("stable"), data.get("canary")
        if canary and canary["version"] == state.candidate_version:
            data["stable"], data["canary"] = canary, None
            if old:
                data.setdefault("retired", []).append(old["pid"])
        data["routes"] = self._routes(data)
        data["rollout"] = state.to_annotations()
        self.write(data)
        self._reap(data)

    def rollback(self, state: RolloutState) -> None:
        data = self.read()
        if data.get("canary"):
            data.setdefault("retired", []).append(data["canary"]["pid"])
            data["canary"] = None
        data["routes"] = self._routes(data)
        data["rollout"] = state.to_annotations()
        self.write(data)
        self._reap(data)

    def _reap(self, data: dict) -> None:
        for pid in data.get("retired", []):
            stop(pid)
        data["retired"] = []
        self.write(data)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        with (self.folder / "events.jsonl").open("a") as fh:
            fh.write(json.dumps({"time": now_iso(), "type": "Warning" if warning else "Normal", "reason": reason,
                                 "message": message}) + "\n")

    def matchers(self) -> dict[str, str]:
        return {"job": "sentiment-local"}

    @contextmanager
    def soak(self, state: RolloutState):
        if self.load_rps <= 0:
            yield None
            return
        generator = LoadGenerator(self.router_url(), load_reviews(self.load_source), rps=self.load_rps,
                                  seed=self.seed).start()
        try:
            yield generator
        finally:
            summary = generator.stop()
            # a measured result of the soak (docs: the runbook quotes it), so stdout, not the log
            emit(f"rollout: local load during the soak: {summary}")
