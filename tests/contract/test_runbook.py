"""docs/runbook.md: every command in its shell blocks is exercised or validated offline.

- `sentimentops ...`: the subcommand's `--help` runs and lists every flag used; the offline-safe ones run for real.
- `argo ...`: the WorkflowTemplate, its parameters and the ServiceAccount exist in the rendered YAML and the chart.
- `kubectl ...`: the InferenceService/Service named exist in the rendered chart; each `patch` is applied to the
  rendered InferenceService and the result passes the strict KServe schema (canaryTrafficPercent 0..100).
- `helm`, `terraform`, `gcloud`, `make`: the chart, values files, variables and targets they name exist.
- every alert defined in charts/sentimentops/files/monitoring/rules/ has a row in the alert table."""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "runbook.md"
NAMESPACE = "sentimentops"
SENTIMENTOPS = REPO / ".venv" / "bin" / "sentimentops"


def commands() -> list[list[str]]:
    text = RUNBOOK.read_text()
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL) for line in block.splitlines()]
    cmds = []
    for line in lines:
        if line and not line.startswith("#"):
            for part in line.split(" && "):
                cmds.append(shlex.split(part))
    return cmds


def by_tool(tool: str) -> list[list[str]]:
    return [c for c in commands() if c[0] == tool or (c[0] == "cd" and tool == "cd")]


def flag_value(cmd: list[str], *names: str) -> list[str]:
    return [cmd[i + 1] for i, tok in enumerate(cmd[:-1]) if tok in names]


@pytest.fixture(scope="module")
def chart_docs(tmp_path_factory) -> list[dict]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
    chart = REPO / "charts" / "sentimentops"
    values = yaml.safe_load((REPO / "charts" / "sentimentops" / "values-gke.yaml").read_text())
    out = helm.Chart.load(chart).render(values, name="sentimentops", namespace=NAMESPACE, is_install=True)
    return [d for t in out.values() for d in yaml.safe_load_all(t) if d]


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


KNOWN = {"sentimentops", "argo", "kubectl", "helm", "terraform", "gcloud", "make", "cd"}


def test_every_command_is_one_this_test_knows():
    cmds = commands()
    assert len(cmds) >= 15
    assert {c[0] for c in cmds} <= KNOWN, {c[0] for c in cmds} - KNOWN


def test_sentimentops_commands_exist_with_their_flags(tmp_path):
    for cmd in by_tool("sentimentops"):
        words = [w for w in cmd[1:3] if not w.startswith("-") and "/" not in w and "." not in w and " " not in w]
        sub = words[:2] if words[:2] == ["pipeline", "run"] else words[:1]
        proc = subprocess.run([str(SENTIMENTOPS), *sub, "--help"], check=False, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (cmd, proc.stderr)
        for flag in (tok.split("=")[0] for tok in cmd if tok.startswith("-")):
            assert flag in proc.stdout, f"{' '.join(cmd)}: {flag} is not a flag of `sentimentops {' '.join(sub)}`"
    # The offline-safe ones run for real.
    for cmd in by_tool("sentimentops"):
        if cmd[1] in {"render", "check"}:
            proc = subprocess.run([str(SENTIMENTOPS), *cmd[1:]], check=False, cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)


def test_argo_commands_name_the_rendered_template_and_chart_objects(chart_docs):
    templates = named(chart_docs, "WorkflowTemplate")
    service_accounts = named(chart_docs, "ServiceAccount")
    submits = [c for c in by_tool("argo") if c[1] == "submit"]
    assert submits
    for cmd in by_tool("argo"):
        assert flag_value(cmd, "-n", "--namespace") == [NAMESPACE], cmd
    for cmd in submits:
        (source,) = flag_value(cmd, "--from")
        kind, name = source.split("/")
        assert kind == "workflowtemplate" and name in templates, source
        params = {p["name"] for p in templates[name]["spec"]["arguments"]["parameters"]}
        for p in flag_value(cmd, "-p", "--parameter"):
            assert p.split("=")[0] in params, p
        (sa,) = flag_value(cmd, "--serviceaccount")
        assert sa in service_accounts


def test_kubectl_commands_name_chart_objects_and_patches_stay_valid(chart_docs):
    from sentimentops.workflows.checks.schema_check import manifest_errors

    isvcs = named(chart_docs, "InferenceService")
    services = named(chart_docs, "Service")
    assert by_tool("kubectl")
    for cmd in by_tool("kubectl"):
        assert flag_value(cmd, "-n", "--namespace") == [NAMESPACE], cmd
        if "isvc" in cmd:
            name = cmd[cmd.index("isvc") + 1].split("/")[-1]
            assert name in isvcs, cmd
        for tok in cmd:
            if tok.startswith("isvc/"):
                assert tok.split("/")[1] in isvcs
            if tok.startswith("svc/"):
                assert tok.split("/")[1] in services, tok
        for selector in flag_value(cmd, "-l"):
            key, value = selector.split("=")
            assert key == "serving.kserve.io/inferenceservice" and value in isvcs
        if cmd[1] == "patch":
            assert flag_value(cmd, "--type") == ["merge"]
            (patch,) = flag_value(cmd, "-p")
            patched = _merge(copy.deepcopy(isvcs[cmd[3]]), json.loads(patch))
            assert manifest_errors(patched) == [], patch


def _merge(doc: dict, patch: dict) -> dict:
    for key, value in patch.items():
        doc[key] = _merge(doc.get(key, {}), value) if isinstance(value, dict) else value
    return doc


def test_helm_terraform_gcloud_make_lines_name_what_exists():
    for cmd in by_tool("helm"):
        assert cmd[1:5] == ["upgrade", "--install", "sentimentops", "charts/sentimentops"]
        for path in flag_value(cmd, "-f", "--values"):
            assert (REPO / path).is_file(), path
        assert flag_value(cmd, "--namespace", "-n") == [NAMESPACE]
    tf_vars = (REPO / "terraform" / "variables.tf").read_text()
    for cmd in by_tool("terraform"):
        for var in flag_value(cmd, "-var"):
            assert f'variable "{var.split("=")[0]}"' in tf_vars, var
    for cmd in by_tool("gcloud"):
        assert cmd[1:4] == ["container", "clusters", "get-credentials"]
        assert re.search(rf'variable "cluster_name"[^}}]*default\s*=\s*"{cmd[4]}"', tf_vars, re.DOTALL)
        assert re.search(rf'variable "region"[^}}]*default\s*=\s*"{flag_value(cmd, "--region")[0]}"', tf_vars, re.DOTALL)
    makefile = (REPO / "Makefile").read_text()
    for cmd in by_tool("make"):
        for target in cmd[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), target
    assert all(c[1] == "terraform" for c in by_tool("cd"))


def test_every_alert_has_a_runbook_entry():
    text = RUNBOOK.read_text()
    alerts = {r["alert"] for f in (REPO / "charts" / "sentimentops" / "files" / "monitoring" / "rules").glob("*.yaml")
              for g in (yaml.safe_load(f.read_text()) or {}).get("groups", []) for r in g["rules"] if "alert" in r}
    rows = set(re.findall(r"^\| (\w+) \|", text, re.MULTILINE))
    assert alerts <= rows, f"alerts without a runbook row: {sorted(alerts - rows)}"
    assert "```mermaid\nflowchart" in text and "```mermaid\nsequenceDiagram" in text
