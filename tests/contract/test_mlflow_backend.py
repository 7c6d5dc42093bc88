"""MLflow's backend store on GKE, followed from terraform to the rendered pod: Cloud SQL for PostgreSQL
(terraform/cloudsql.tf: private IP on the cluster's VPC, IAM database login as the mlflow Google service account)
-> terraform's `chart_values` output (mlflow.cloudSql.*) -> values-gke.yaml -> the MLflow Deployment (Cloud SQL Auth
Proxy native sidecar with `--private-ip --auto-iam-authn`, a backend URI naming the IAM user and the database on
127.0.0.1, no Secret). Without Cloud SQL (values.yaml, the kind harness) the Secret-based URI and the in-chart
Postgres stay. And the slim MLflow image: mlflow + psycopg2 + the GCS client, no torch, no sentimentops package."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pytest
import terraform_hcl
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sentimentops"
TF = REPO / "terraform"
MLFLOW_DOCKERFILE = REPO / "images" / "mlflow.Dockerfile"
NAMESPACE = "sentimentops"
ACME = "acme-prod"  # the project terraform is applied to in these tests

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (the infra extra)")


# ---- terraform, parsed ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf() -> dict[str, list]:
    return terraform_hcl.load()


def resources(tf: dict, rtype: str) -> dict[str, dict]:
    return {name: body for block in tf.get("resource", []) for name, body in block.get(rtype, {}).items()}


def locals_(tf: dict) -> dict:
    return {k: v for block in tf.get("locals", []) for k, v in block.items()}


def variables(tf: dict) -> dict[str, dict]:
    return {name: body for block in tf.get("variable", []) for name, body in block.items()}


def outputs(tf: dict) -> dict[str, dict]:
    return {name: body for block in tf.get("output", []) for name, body in block.items()}


def gsa_email(tf: dict, role: str, project: str = ACME) -> str:
    account_id = resources(tf, "google_service_account")["workload"]["account_id"].replace("${each.key}", role)
    return f"{account_id}@{project}.iam.gserviceaccount.com"


def instance_name(tf: dict) -> str:
    name = resources(tf, "google_sql_database_instance")["mlflow"]["name"]
    return name.replace("${var.cluster_name}", variables(tf)["cluster_name"]["default"])


def connection_name(tf: dict, project: str = ACME) -> str:
    """What google_sql_database_instance.mlflow.connection_name is after an apply with the default variables:
    <project>:<region>:<name>, the region being local.cloudsql_region (var.cloudsql_region, else var.region)."""
    inst = resources(tf, "google_sql_database_instance")["mlflow"]
    assert inst["region"] == "${local.cloudsql_region}"
    assert locals_(tf)["cloudsql_region"] == '${var.cloudsql_region != "" ? var.cloudsql_region : var.region}'
    region = variables(tf)["cloudsql_region"]["default"] or variables(tf)["region"]["default"]
    return f"{project}:{region}:{instance_name(tf)}"


def iam_user(tf: dict, project: str = ACME) -> str:
    """google_sql_user.mlflow.name, evaluated: the mlflow GSA's email without `.gserviceaccount.com`."""
    user = resources(tf, "google_sql_user")["mlflow"]
    assert user["name"] == "${local.mlflow_db_user}"
    expr = locals_(tf)["mlflow_db_user"]
    m = re.fullmatch(r'\$\{trimsuffix\(google_service_account\.workload\["(\w+)"\]\.email, "([^"]+)"\)\}',
                     expr.replace('\\"', '"'))
    assert m, expr
    email = gsa_email(tf, m.group(1), project)
    assert email.endswith(m.group(2))
    return email[: -len(m.group(2))]


def terraform_chart_values(tf: dict, project: str = ACME) -> dict:
    """`terraform output -json chart_values` for `project`: every leaf of outputs.tf's expression evaluated from the
    resources it names (an unknown reference fails: the test follows the output, not a copy of it)."""
    registry_loc = variables(tf)["region"]["default"]
    prefix = project  # var.bucket_prefix empty: the project id
    known = {
        "local.image_registry": f"{registry_loc}-docker.pkg.dev/{project}/sentimentops",
        "local.dvc_remote": f"gs://{prefix}-dvc/remote",
        "local.mlflow_artifacts_destination": f"gs://{prefix}-mlflow/artifacts",
        "local.production_store": f"gs://{prefix}-production",
        'google_storage_bucket.data["argo"].name': f"{prefix}-argo",
        "google_sql_database_instance.mlflow.connection_name": connection_name(tf, project),
        "google_sql_database.mlflow.name": resources(tf, "google_sql_database")["mlflow"]["name"],
    }

    def evaluate(node):
        if isinstance(node, dict):
            return {k: evaluate(v) for k, v in node.items()}
        if isinstance(node, list) and len(node) == 1 and isinstance(node[0], dict):
            return evaluate(node[0])
        if isinstance(node, str) and (m := re.fullmatch(r"\$\{(.+)\}", node)):
            ref = m.group(1).replace('\\"', '"')
            if sa := re.fullmatch(r'google_service_account\.workload\["(\w+)"\]\.email', ref):
                return gsa_email(tf, sa.group(1), project)
            assert ref in known, f"chart_values names {ref}: teach this test what it evaluates to"
            return known[ref]
        return node

    return evaluate(outputs(tf)["chart_values"]["value"])


# ---- the chart ----------------------------------------------------------------------------------------------------

def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict) -> list[dict]:
    out = helm.Chart.load(CHART).render(values, name="sentimentops", namespace=NAMESPACE, is_install=True)
    return [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def gke_values() -> dict:
    return yaml.safe_load((CHART / "values-gke.yaml").read_text())


@pytest.fixture(scope="module")
def applied(tf) -> tuple[dict, list[dict]]:
    """The runbook's install: values-gke.yaml, then terraform's chart_values for project acme-prod."""
    values = deep_merge(gke_values(), terraform_chart_values(tf))
    return values, render(values)


def mlflow_pod(docs: list[dict]) -> dict:
    return named(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]


def flag(args: list[str], name: str) -> str:
    """The value of `--name value` or `--name=value`."""
    for i, a in enumerate(args):
        if a == name:
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def test_terraform_output_reaches_the_proxy_sidecar_and_the_backend_uri(tf, applied):
    _values, docs = applied
    pod = mlflow_pod(docs)
    # The proxy: a native sidecar (init container that keeps running), started before MLflow migrates its schema.
    (proxy,) = pod["initContainers"]
    assert proxy["restartPolicy"] == "Always"
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert proxy["image"] == defaults["mlflow"]["cloudSql"]["proxy"]["image"]
    assert re.fullmatch(r"gcr\.io/cloud-sql-connectors/cloud-sql-proxy:2\.\d+\.\d+", proxy["image"])
    args = proxy["args"]
    assert {"--private-ip", "--auto-iam-authn", "--health-check"} <= set(args)
    # The instance: terraform's connection name, through chart_values, as the proxy's one positional argument.
    assert args[-1] == connection_name(tf) == f"{ACME}:europe-west4:sentimentops-mlflow"
    assert [a for a in args if not a.startswith("-") and ":" in a] == [args[-1]]
    port = flag(args, "--port")
    assert flag(args, "--address") == "127.0.0.1"
    # Health: the startup probe gates MLflow's start; the endpoints listen where the kubelet can reach them.
    health = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert flag(args, "--http-address") == "0.0.0.0" and int(flag(args, "--http-port")) in health.values()
    assert proxy["startupProbe"]["httpGet"]["path"] == "/startup"
    assert health[proxy["startupProbe"]["httpGet"]["port"]] == int(flag(args, "--http-port"))
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/liveness"
    sc = proxy["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]
    # MLflow: the IAM user (URL-encoded) and the database, on the proxy's local port; no password, no Secret.
    (server,) = pod["containers"]
    assert server["command"] == ["mlflow", "server"]
    uri = flag(server["args"], "--backend-store-uri")
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql" and parts.hostname == "127.0.0.1" and str(parts.port) == port
    assert parts.password is None and ":" not in parts.netloc.split("@")[0]
    assert parts.username == quote(iam_user(tf), safe="") == f"so-mlflow%40{ACME}.iam"
    assert unquote(parts.username) == iam_user(tf)
    assert parts.path == "/" + resources(tf, "google_sql_database")["mlflow"]["name"] == "/mlflow"
    assert parts.query == "sslmode=disable"  # the proxy speaks TLS to the instance, plain TCP on localhost
    assert flag(server["args"], "--artifacts-destination") == f"gs://{ACME}-mlflow/artifacts"
    assert not [v for v in pod.get("volumes", []) if "secret" in v]
    assert "secretKeyRef" not in str(pod) and "password" not in str(pod).lower()


def test_the_pods_identity_is_the_database_user_terraform_creates(tf, applied):
    values, docs = applied
    pod = mlflow_pod(docs)
    ksa = named(docs, "ServiceAccount")[pod["serviceAccountName"]]
    email = ksa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    # Workload Identity: the KSA is mapped to the mlflow GSA, and terraform lets exactly that KSA act as it.
    assert email == gsa_email(tf, "mlflow") == values["serviceAccounts"]["mlflow"]["gcpServiceAccount"]
    roles = locals_(tf)["workload_roles"]
    assert roles["mlflow"]["ksa"] == pod["serviceAccountName"]
    # The IAM database user is that account (Cloud SQL's naming: the email without .gserviceaccount.com).
    user = resources(tf, "google_sql_user")["mlflow"]
    assert user["type"] == "CLOUD_IAM_SERVICE_ACCOUNT" and "password" not in user
    assert user["instance"] == "${google_sql_database_instance.mlflow.name}"
    assert iam_user(tf) == email.removesuffix(".gserviceaccount.com")
    # GKE's metadata server hands the pod its GSA token without a mounted Kubernetes token.
    assert pod["automountServiceAccountToken"] is False


def test_the_mlflow_gsa_may_connect_and_log_in_to_this_instance_only(tf):
    grant = {k: (v.replace('\\"', '"') if isinstance(v, str) else v)
             for k, v in resources(tf, "google_project_iam_member")["mlflow_cloudsql"].items()}
    assert set(re.findall(r"roles/[\w.]+", grant["for_each"])) == {"roles/cloudsql.client", "roles/cloudsql.instanceUser"}
    assert grant["role"] == "${each.value}"
    assert grant["member"] == 'serviceAccount:${google_service_account.workload["mlflow"].email}'
    condition = grant["condition"][0]["expression"].replace('\\"', '"')
    assert "projects/${var.project_id}/instances/${google_sql_database_instance.mlflow.name}" in condition
    assert 'resource.service == "sqladmin.googleapis.com"' in condition


def test_the_instance_is_private_on_the_clusters_vpc_backed_up_and_passwordless(tf):
    inst = resources(tf, "google_sql_database_instance")["mlflow"]
    cluster = resources(tf, "google_container_cluster")["primary"]
    settings = inst["settings"][0]
    ip = settings["ip_configuration"][0]
    assert ip["ipv4_enabled"] is False and "authorized_networks" not in ip
    assert ip["private_network"] == cluster["network"] == "${google_compute_network.vpc.id}"
    assert ip["ssl_mode"] in {"ENCRYPTED_ONLY", "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"}
    # Private services access on the same VPC, a range apart from the node, pod and service ranges.
    peering = resources(tf, "google_compute_global_address")["private_services"]
    assert peering["purpose"] == "VPC_PEERING" and peering["address_type"] == "INTERNAL"
    assert peering["network"] == cluster["network"]
    conn = resources(tf, "google_service_networking_connection")["private_services"]
    assert conn["network"] == cluster["network"] and conn["service"] == "servicenetworking.googleapis.com"
    assert conn["reserved_peering_ranges"] == ["${google_compute_global_address.private_services.name}"]
    assert "${google_service_networking_connection.private_services}" in inst["depends_on"]
    reserved = ipaddress.ip_network(f"{peering['address']}/{peering['prefix_length']}")
    subnet = resources(tf, "google_compute_subnetwork")["nodes"]
    used = [subnet["ip_cidr_range"], *(r["ip_cidr_range"] for r in subnet["secondary_ip_range"]),
            cluster["private_cluster_config"][0]["master_ipv4_cidr_block"]]
    assert not [r for r in used if ipaddress.ip_network(r).overlaps(reserved)], used
    # The APIs it needs are enabled the way main.tf enables the others.
    apis = resources(tf, "google_project_service")["cloudsql"]["for_each"]
    assert "sqladmin.googleapis.com" in apis and "servicenetworking.googleapis.com" in apis
    # IAM authentication on; backups with point-in-time recovery; nothing deletes it by accident.
    flags = {f["name"]: f["value"] for f in settings["database_flags"]}
    assert flags["cloudsql.iam_authentication"] == "on"
    backup = settings["backup_configuration"][0]
    assert backup["enabled"] is True and backup["point_in_time_recovery_enabled"] is True
    assert inst["deletion_protection"] is True and settings["deletion_protection_enabled"] is True
    assert inst["database_version"].startswith("POSTGRES_")
    assert resources(tf, "google_sql_database")["mlflow"]["instance"] == "${google_sql_database_instance.mlflow.name}"
    # No password anywhere: no built-in user, no secret.
    text = (TF / "cloudsql.tf").read_text()
    assert not re.search(r"^\s*password\w*\s*=", text, re.MULTILINE)
    assert "google_secret_manager" not in "\n".join(p.read_text() for p in TF.glob("*.tf"))
    assert {u["type"] for u in resources(tf, "google_sql_user").values()} == {"CLOUD_IAM_SERVICE_ACCOUNT"}


def test_values_gke_placeholder_is_terraforms_connection_name_and_chart_values_covers_it(tf):
    gke = gke_values()["mlflow"]["cloudSql"]
    assert gke["enabled"] is True
    assert gke["instanceConnectionName"] == connection_name(tf, project="your-project-id")
    from_tf = terraform_chart_values(tf)["mlflow"]["cloudSql"]
    assert set(from_tf) == {"instanceConnectionName", "database"}
    assert from_tf["database"] == gke["database"]
    assert outputs(tf)["mlflow_cloudsql_instance"]["value"] == "${google_sql_database_instance.mlflow.connection_name}"
    assert gke_values()["postgres"]["enabled"] is False
    assert "backendStoreSecret" not in gke_values()["mlflow"]


def _secret_backend(docs: list[dict], values: dict) -> None:
    pod = mlflow_pod(docs)
    assert "initContainers" not in pod
    (server,) = pod["containers"]
    assert server["command"] == ["sh", "-c"] and '"$(cat /etc/mlflow-db/uri)"' in server["args"][0]
    secret = values.get("mlflow", {}).get("backendStoreSecret") or \
        yaml.safe_load((CHART / "values.yaml").read_text())["mlflow"]["backendStoreSecret"]
    assert {"name": "db", "secret": {"secretName": secret}} in pod["volumes"]
    assert "mlflow-postgres" in named(docs, "StatefulSet") and "mlflow-postgres" in named(docs, "Service")


def test_default_and_kind_values_keep_the_secret_uri_and_the_in_chart_postgres():
    _secret_backend(render({}), {})
    kind = yaml.safe_load((REPO / "scripts" / "e2e" / "values-kind.yaml").read_text())
    assert not kind.get("mlflow", {}).get("cloudSql", {}).get("enabled")
    _secret_backend(render(kind), kind)


@pytest.mark.parametrize("values, message", [
    ({"mlflow": {"cloudSql": {"enabled": True, "instanceConnectionName": "p-12345:europe-west4:i"}}}, "postgres"),
    ({"postgres": {"enabled": False}, "mlflow": {"cloudSql": {"enabled": True}}}, "instanceConnectionName"),
    ({"postgres": {"enabled": False},
      "mlflow": {"cloudSql": {"enabled": True, "instanceConnectionName": "p-12345:europe-west4:i"}}},
     "gcpServiceAccount"),
    ({"mlflow": {"cloudSql": {"instanceConnectionName": "not a connection name"}}}, "instanceConnectionName"),
    ({"mlflow": {"cloudSql": {"proxy": {"image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:latest"}}}}, "image"),
    ({"mlflow": {"cloudSql": {"pasword": "x"}}}, "pasword"),
])
def test_cloud_sql_values_are_checked(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# ---- the slim MLflow image ------------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.MULTILINE)
            if not m.group(0).lstrip().startswith("#")]


def _pip_installs(ins: list[tuple[str, str]]) -> list[list[str]]:
    out = []
    for kind, arg in ins:
        if kind == "RUN":
            for part in re.split(r"&&|;", arg):
                words = shlex.split(part)
                if "pip" in " ".join(words[:1]) and "install" in words:
                    out.append(words[words.index("install") + 1:])
    return out


def _constraints() -> dict[str, str]:
    lines = (REPO / "images" / "constraints.txt").read_text().splitlines()
    return {n.lower(): v for line in lines if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip()))
            for n, v in [m.groups()]}


def test_the_mlflow_image_is_slim_pinned_and_non_root():
    ins = dockerfile_instructions(MLFLOW_DOCKERFILE)
    base = dict(a.split("=", 1) for i, a in dockerfile_instructions(REPO / "images" / "base.Dockerfile")
                if i == "ARG" and "=" in a)
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    # The base's own pinned Python, not the sentimentops base (which carries the package).
    assert args["PYTHON_IMAGE"] == base["PYTHON_IMAGE"]
    assert {a.split(" AS ")[0] for i, a in ins if i == "FROM"} == {"${PYTHON_IMAGE}"}
    assert "BASE_IMAGE" not in args
    (install,) = _pip_installs(ins)
    assert install[:2] == ["--constraint", "constraints.txt"]
    packages = {re.split(r"[=<>\[]", p)[0].lower(): p for p in install[2:]}
    assert set(packages) == {"mlflow", "google-cloud-storage", "psycopg2-binary"}, install
    assert not [p for p in install if "sentimentops" in p or "/src" in p or "torch" in p or p.startswith(".")]
    # One MLflow version: the constraints pin the one every extra of pyproject.toml names.
    pins = _constraints()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    mlflow_pins = {d for deps in extras.values() for d in deps if d.startswith("mlflow==")}
    assert mlflow_pins == {f"mlflow=={pins['mlflow']}"}
    assert "google-cloud-storage" in pins
    assert re.fullmatch(r"psycopg2-binary==\d+\.\d+\.\d+", packages["psycopg2-binary"]) or \
        "psycopg2-binary" in pins
    run = " ".join(a for i, a in ins if i == "RUN")
    assert re.search(r'! \S*python -c "import torch"', run), "the build must fail if torch ever comes in"
    assert "COPY steps" not in MLFLOW_DOCKERFILE.read_text() and "pyproject.toml" not in " ".join(
        a for i, a in ins if i == "COPY")
    assert [a for i, a in ins if i == "USER"][-1] == "10001:10001"
    assert ("ARG", 'GIT_SHA=""') in ins and ("ENV", "SENTIMENTOPS_GIT_SHA=${GIT_SHA}") in ins
    assert [a for i, a in ins if i == "ENTRYPOINT"] == ['["mlflow"]']


def test_the_mlflow_server_accepts_the_host_the_steps_call_it_by(tmp_path):
    """Review of issue 13: MLflow 3.5+ answers 403 "Invalid Host header" to a Host that is neither loopback nor a
    private IP, so every step calling `http://mlflow.<ns>.svc.cluster.local:5000` (the tracking URI the chart gives the
    workflows) was refused, while the e2e harness, querying through `kubectl exec` on 127.0.0.1, never noticed. A real
    `mlflow server` with the rendered MLFLOW_SERVER_ALLOWED_HOSTS answers that Host, and still refuses a stranger's."""
    from sentimentops.steps.core.client import free_port
    from sentimentops.steps.core.processes import spawn, stop, wait_for

    docs = render(yaml.safe_load((CHART / "values.yaml").read_text()))
    (server,) = mlflow_pod(docs)["containers"]
    env = {e["name"]: e["value"] for e in server["env"] if "value" in e}
    tracking = next(p["value"] for d in docs if d["kind"] == "WorkflowTemplate"
                    and d["metadata"]["name"] == "sentiment-training"
                    for p in d["spec"]["arguments"]["parameters"] if p["name"] == "mlflow-tracking-uri")
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    with (tmp_path / "server.log").open("w") as log:
        proc = spawn([mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db", "--host", "127.0.0.1",
                      "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                     env={**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": env["MLFLOW_SERVER_ALLOWED_HOSTS"],
                          "MLFLOW_DISABLE_TELEMETRY": "true"})
    proc.log = tmp_path / "server.log"

    def status(host: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0

    try:
        wait_for(lambda: status(f"127.0.0.1:{port}") == 200, 240, "mlflow server", procs=[proc], poll_s=0.5)
        assert status(urlsplit(tracking).netloc) == 200, tracking
        assert status("rebinding.example.com:5000") == 403
    finally:
        stop(proc, grace_s=10)
