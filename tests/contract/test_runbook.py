"""docs/runbook.md: every command in its shell blocks is exercised or validated offline.

- `sentimentops ...`: the subcommand's `--help` runs and lists every flag used; the offline-safe ones run for real.
- `argo ...`: the WorkflowTemplate, its parameters and any ServiceAccount exist in the rendered chart.
- `kubectl ...`: the InferenceService/Service named exist in the rendered chart; each `patch` is applied to the
  rendered InferenceService and the result passes the strict KServe schema; each `create secret` is a row of the
  runbook's table of Secrets an operator creates, and every row has its command.
- `helm`: the chart, values files (in the repository or written by an earlier command), `--set` keys of the
  chart's values, and the platform releases of charts/platform/versions.yaml.
- `terraform`: `-chdir=terraform`, variables, `-target` resources and outputs that exist.
- `gcloud`: the cluster name and region defaults of terraform; `gcloud sql` lines name terraform's Cloud SQL instance
  and its IAM database user (the mlflow Google service account).
- the tables: the platform releases equal versions.yaml; the operator's Secrets cover every Secret the chart and
  Alertmanager read that nothing else creates; the capacity plan is recomputed from benchmarks/serve/results.json.
- every alert defined in charts/sentimentops/files/monitoring/rules/ has a row in the alert table."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from wiring_refs import get_dotted

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "runbook.md"
NAMESPACE = "sentimentops"
SENTIMENTOPS = REPO / ".venv" / "bin" / "sentimentops"


def commands(with_redirects: bool = False) -> list[list[str]]:
    """Each command as words; a `> file` redirect is cut off (with_redirects keeps it, for files_written)."""
    text = RUNBOOK.read_text()
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL) for line in block.splitlines()]
    cmds = []
    for line in lines:
        if line and not line.startswith("#"):
            for part in line.split(" && "):
                words = shlex.split(part)
                cmds.append(words if with_redirects or ">" not in words else words[:words.index(">")])
    return cmds


def files_written() -> set[str]:
    """Files the runbook's commands write with `> file` (e.g. the terraform values file helm reads next)."""
    return {c[c.index(">") + 1] for c in commands(with_redirects=True) if ">" in c}


def by_tool(tool: str) -> list[list[str]]:
    return [c for c in commands() if c[0] == tool or (c[0] == "cd" and tool == "cd")]


def flag_value(cmd: list[str], *names: str) -> list[str]:
    return [cmd[i + 1] for i, tok in enumerate(cmd[:-1]) if tok in names]


def helm_sets(cmd: list[str]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in flag_value(cmd, "--set"))


def _nested(dotted: dict[str, str]) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="module")
def chart_docs(tmp_path_factory) -> list[dict]:
    """The chart as the runbook installs it: values-gke.yaml plus every `--set` of the runbook's helm commands (the
    install's, then the first model's storage URI), so the InferenceService the kubectl lines name is rendered."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")
    chart = REPO / "charts" / "sentimentops"
    values = yaml.safe_load((REPO / "charts" / "sentimentops" / "values-gke.yaml").read_text())
    for cmd in by_tool("helm"):
        if cmd[1] == "upgrade":
            values = _deep_merge(values, _nested(helm_sets(cmd)))
    out = helm.Chart.load(chart).render(values, name="sentimentops", namespace=NAMESPACE, is_install=True)
    return [d for path, t in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


KNOWN = {"sentimentops", "argo", "kubectl", "helm", "terraform", "gcloud", "make"}


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
        # The template names its own ServiceAccount; an explicit one must exist.
        for sa in flag_value(cmd, "--serviceaccount"):
            assert sa in service_accounts, sa
    for cmd in by_tool("argo"):
        for selector in flag_value(cmd, "-l"):
            key, value = selector.split("=")
            assert key == "workflows.argoproj.io/workflow-template" and value in templates, selector


def test_kubectl_commands_name_chart_objects_and_patches_stay_valid(chart_docs):
    from sentimentops.workflows.checks.schema_check import manifest_errors

    isvcs = named(chart_docs, "InferenceService")
    services = named(chart_docs, "Service")
    assert by_tool("kubectl")
    for cmd in by_tool("kubectl"):
        if cmd[1:3] == ["create", "secret"]:
            continue  # test_secret_commands_create_the_tables_secrets
        assert flag_value(cmd, "-n", "--namespace") == [NAMESPACE], cmd
        if "isvc" in cmd:
            name = cmd[cmd.index("isvc") + 1].split("/")[-1]
            assert name in isvcs, cmd
        for tok in cmd:
            if tok.startswith("deploy/"):
                assert tok.split("/")[1] in named(chart_docs, "Deployment"), tok
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


def test_helm_lines_name_the_chart_its_values_and_the_platform_releases():
    chart_values = yaml.safe_load((REPO / "charts" / "sentimentops" / "values.yaml").read_text())
    releases = {r["name"]: r for r in platform_releases()}
    written = files_written()
    upgrades = [c for c in by_tool("helm") if c[1] == "upgrade"]
    assert any("--install" in c for c in upgrades)
    for cmd in by_tool("helm"):
        if cmd[1] == "upgrade":
            args = [w for w in cmd[2:] if w != "--install"]
            assert args[:2] == ["sentimentops", "charts/sentimentops"], cmd
            assert flag_value(cmd, "--namespace", "-n") == [NAMESPACE]
            for path in flag_value(cmd, "-f", "--values"):
                assert (REPO / path).is_file() or path in written, path
            for key in helm_sets(cmd):
                assert _has_key(chart_values, key), f"--set {key}: not a key of charts/sentimentops/values.yaml"
        elif cmd[1] == "status":
            assert cmd[2] in releases, cmd
            assert flag_value(cmd, "-n", "--namespace") == [releases[cmd[2]]["namespace"]], cmd
        else:
            assert cmd[1:] == ["list", "--all-namespaces"], cmd


_ABSENT = object()


def _has_key(values: dict, dotted: str) -> bool:
    return get_dotted(values, dotted, _ABSENT) is not _ABSENT


def _terraform() -> dict[str, set[str]]:
    text = "\n".join(p.read_text() for p in sorted((REPO / "terraform").glob("*.tf")))
    return {"variable": set(re.findall(r'^variable "(\w+)"', text, re.MULTILINE)),
            "output": set(re.findall(r'^output "(\w+)"', text, re.MULTILINE)),
            "resource": {f"{t}.{n}" for t, n in re.findall(r'^resource "(\w+)" "(\w+)"', text, re.MULTILINE)}}


def test_terraform_gcloud_make_lines_name_what_exists():
    tf = _terraform()
    assert by_tool("terraform")
    for cmd in by_tool("terraform"):
        assert cmd[1] == "-chdir=terraform", cmd
        assert cmd[2] in {"init", "apply", "output"}, cmd
        for var in flag_value(cmd, "-var"):
            assert var.split("=")[0] in tf["variable"], var
        for target in (w.split("=", 1)[1] for w in cmd if w.startswith("-target=")):
            assert target in tf["resource"], target
        if cmd[2] == "output":
            (name,) = [w for w in cmd[3:] if not w.startswith("-")]
            assert name in tf["output"], name
    tf_vars = (REPO / "terraform" / "variables.tf").read_text()
    for cmd in by_tool("gcloud"):
        if cmd[1] == "sql":
            _check_gcloud_sql(cmd, tf_vars)
            continue
        assert cmd[1:4] == ["container", "clusters", "get-credentials"]
        assert re.search(rf'variable "cluster_name"[^}}]*default\s*=\s*"{cmd[4]}"', tf_vars, re.DOTALL)
        assert re.search(rf'variable "region"[^}}]*default\s*=\s*"{flag_value(cmd, "--region")[0]}"', tf_vars, re.DOTALL)
    makefile = (REPO / "Makefile").read_text()
    for cmd in by_tool("make"):
        for target in cmd[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), target


def _check_gcloud_sql(cmd: list[str], tf_vars: str) -> None:
    """`gcloud sql users assign-roles USER --instance=I --type=T ...` and `gcloud sql backups list --instance=I`:
    I is terraform's MLflow instance (its name with the default cluster_name), USER its IAM database user."""
    cloudsql = (REPO / "terraform" / "cloudsql.tf").read_text()
    name = re.search(r'resource "google_sql_database_instance" "mlflow" \{\s*name\s*=\s*"([^"]+)"', cloudsql).group(1)
    cluster = re.search(r'variable "cluster_name"[^}]*default\s*=\s*"([^"]+)"', tf_vars, re.DOTALL).group(1)
    options = dict(w.split("=", 1) for w in cmd if w.startswith("--") and "=" in w)
    assert options.get("--instance") == name.replace("${var.cluster_name}", cluster), cmd
    if cmd[2:4] == ["users", "assign-roles"]:
        user_type = re.search(r'resource "google_sql_user" "mlflow" \{[^}]*type\s*=\s*"([^"]+)"', cloudsql).group(1)
        assert options.get("--type") == user_type, cmd
        iam = (REPO / "terraform" / "iam.tf").read_text()
        account_id = re.search(r'resource "google_service_account" "workload" \{[^}]*account_id\s*=\s*"([^"]+)"',
                               iam).group(1).replace("${each.key}", "mlflow")
        # The user is the mlflow GSA's email without `.gserviceaccount.com` (terraform local.mlflow_db_user).
        assert cmd[4] == f"{account_id}@PROJECT.iam", cmd
        assert 'trimsuffix(google_service_account.workload["mlflow"].email, ".gserviceaccount.com")' in cloudsql
        assert options.get("--database-roles"), cmd
    else:
        assert cmd[2:4] == ["backups", "list"], cmd


def test_terraforms_chart_values_are_chart_keys_and_replace_every_placeholder():
    """`terraform output -json chart_values` is the values file the runbook passes after values-gke.yaml: each of
    its keys must be a chart value, and together they must replace every `your-project-id` placeholder."""
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed (the infra extra)")
    with open(REPO / "terraform" / "outputs.tf") as fh:
        outputs = {k: v for block in hcl2.load(fh)["output"] for k, v in block.items()}
    value = outputs['"chart_values"' if '"chart_values"' in outputs else "chart_values"]["value"]

    def leaves(node, prefix=""):
        for key, sub in node.items():
            key = key.strip('"')
            if key == "__is_block__":
                continue
            path = f"{prefix}{key}"
            if isinstance(sub, dict):
                yield from leaves(sub, path + ".")
            else:
                yield path

    from_terraform = set(leaves(value))
    chart_values = yaml.safe_load((REPO / "charts" / "sentimentops" / "values.yaml").read_text())
    for key in from_terraform:
        assert _has_key(chart_values, key), f"terraform chart_values.{key} is not a chart value"
    gke = yaml.safe_load((REPO / "charts" / "sentimentops" / "values-gke.yaml").read_text())
    placeholders = {path for path, leaf in _flatten(gke) if "your-project-id" in str(leaf)}
    assert placeholders, "values-gke.yaml has no placeholder left to check"
    assert placeholders <= from_terraform, f"placeholders terraform does not set: {placeholders - from_terraform}"
    assert any("chart_values" in c and ">" in c for c in commands(with_redirects=True))


def _flatten(node, prefix=""):
    for key, sub in node.items():
        if isinstance(sub, dict):
            yield from _flatten(sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", sub


# ---- the tables ---------------------------------------------------------------------------------------------------

def platform_releases() -> list[dict]:
    doc = yaml.safe_load((REPO / "charts" / "platform" / "versions.yaml").read_text())
    return [r for r in doc["releases"] if "gke" in r.get("targets", ["gke"])]


def table_rows(first_header: str) -> list[list[str]]:
    """Rows of the markdown table whose header starts with first_header."""
    lines = RUNBOOK.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_platform_table_is_versions_yaml():
    rows = table_rows("release")
    expected = [[r["name"], r["namespace"], f'{r["repository"] or "charts/platform"}/{r["chart"]}', r["version"]]
                for r in platform_releases()]
    assert rows == expected


def operator_secrets() -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys, from the table between the operator-secrets markers."""
    text = RUNBOOK.read_text()
    block = text[text.index("<!-- operator-secrets: begin -->"):text.index("<!-- operator-secrets: end -->")]
    assert block.count("| object |") == 1
    out = {}
    for row in table_rows("object"):
        name, kind, namespace, keys = row[0].strip("`"), row[1], row[2], row[3]
        assert kind == "Secret", row
        out[(namespace, name)] = {k.strip() for k in keys.split(",")}
    return out


def test_secret_commands_create_the_tables_secrets():
    table = operator_secrets()
    created: dict[tuple[str, str], set[str]] = {}
    for cmd in by_tool("kubectl"):
        if cmd[1:4] == ["create", "secret", "generic"]:
            (namespace,) = flag_value(cmd, "-n", "--namespace")
            keys = {v.split("=")[0] for v in flag_value(cmd, "--from-file", "--from-literal")}
            keys |= {w.split("=")[1] for w in cmd if w.startswith(("--from-file=", "--from-literal="))}
            created[(namespace, cmd[4])] = keys
    assert created == table


def _secret_refs(node, found: set[tuple[str, str | None]]) -> set[tuple[str, str | None]]:
    """(Secret name, key) pairs a manifest reads: env secretKeyRef, volumes' secretName, Argo Events' authSecret."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"secretKeyRef", "authSecret"} and isinstance(value, dict):
                found.add((value["name"], value.get("key")))
            elif key == "secretName" and isinstance(value, str):
                found.add((value, None))
            else:
                _secret_refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _secret_refs(item, found)
    return found


def test_the_operator_secrets_cover_what_the_chart_and_alertmanager_read(chart_docs):
    table = operator_secrets()
    created_by_chart = {d["metadata"]["name"] for d in chart_docs if d["kind"] == "Secret"}
    refs = {(name, key) for d in chart_docs for name, key in _secret_refs(d, set())}
    # On GKE the MLflow server logs in to Cloud SQL with its Google identity: it reads no backend-store Secret and the
    # operator creates none (the kind harness creates it for the in-chart Postgres).
    assert not any(name.endswith("mlflow-db") for name, _ in refs), refs
    assert not any(name.endswith("mlflow-db") for _, name in table), table
    for name, key in refs:
        if name in created_by_chart:
            continue
        assert (NAMESPACE, name) in table, f"the chart reads Secret {name} nobody creates"
        assert key is None or key in table[(NAMESPACE, name)], (name, key)
    monitoring = next(r["namespace"] for r in platform_releases() if r["name"] == "kube-prometheus-stack")
    config = (REPO / "charts" / "sentimentops" / "files" / "monitoring" / "alertmanager" / "alertmanager.yaml").read_text()
    for name, key in re.findall(r"/etc/alertmanager/secrets/([a-z0-9-]+)/([a-z0-9-]+)", config):
        assert key in table.get((monitoring, name), set()), f"Alertmanager reads {name}/{key} in {monitoring}"


def capacity_inputs() -> dict[str, float]:
    return {row[0]: float(row[1]) for row in table_rows("input")}


def test_the_capacity_plan_follows_from_the_measured_benchmark():
    import json
    import math

    bench = json.loads((REPO / "benchmarks" / "serve" / "results.json").read_text())
    project = next(r for r in bench["results"] if r["server"] == "project")["scenarios"]
    cores = bench["machine"]["cores"]
    # The highest measured full-review rate whose p99 meets the 500 ms SLO.
    at_slo = [s for name, s in project.items() if name.startswith("full") and s["p99_ms"] < 500]
    slo_rate = max(s["rps"] for s in at_slo)
    text = RUNBOOK.read_text()
    assert f"{slo_rate} req/s" in text and f"{cores} cores" in text
    # The chart gives each predictor the cores the benchmark had.
    limits = yaml.safe_load((REPO / "charts" / "sentimentops" / "values.yaml").read_text())
    assert float(limits["inferenceService"]["resources"]["limits"]["cpu"]) == cores
    inputs = capacity_inputs()
    rate, headroom = inputs.pop("request_rate"), inputs.pop("headroom")
    assert 0 < headroom <= 1
    rows = table_rows("node type")
    assert [r[0] for r in rows] == list(inputs), "one plan row per priced node type"
    tf_vars = (REPO / "terraform" / "variables.tf").read_text()
    default_type = re.search(r'variable "cpu_machine_type".*?default\s*=\s*"([^"]+)"', tf_vars, re.DOTALL).group(1)
    assert default_type in inputs
    for row in rows:
        node_type, vcpus = row[0], int(row[1])
        assert node_type.startswith("e2-standard-") and vcpus == int(node_type.rsplit("-", 1)[1])
        replicas = math.ceil(rate / (slo_rate * headroom))
        per_node = vcpus // cores
        nodes = math.ceil(replicas / per_node)
        per_hour = nodes * inputs[node_type]
        per_million = per_hour / (rate * 3600) * 1e6
        assert row[2:] == [str(replicas), str(per_node), str(nodes), f"{per_hour:.2f}", f"{per_million:.2f}"], row


def test_every_alert_has_a_runbook_entry():
    text = RUNBOOK.read_text()
    alerts = {r["alert"] for f in (REPO / "charts" / "sentimentops" / "files" / "monitoring" / "rules").glob("*.yaml")
              for g in (yaml.safe_load(f.read_text()) or {}).get("groups", []) for r in g["rules"] if "alert" in r}
    rows = set(re.findall(r"^\| (\w+) \|", text, re.MULTILINE))
    assert alerts <= rows, f"alerts without a runbook row: {sorted(alerts - rows)}"
    assert "```mermaid\nflowchart" in text and "```mermaid\nsequenceDiagram" in text
