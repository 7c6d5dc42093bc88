# The deploy identity's rights inside the cluster: what `helm upgrade --install sentimentops charts/sentimentops`
# needs when the release workflow runs it as the CI Google service account (GKE maps a Google identity to the RBAC
# user named by its email). Created here, outside the chart it authorises: a chart cannot grant its own installer
# the right to install it.
#
# tests/contract/test_deploy_rbac.py renders the chart (default and GKE values), lists every kind it renders and
# checks each against the rules below, plus Helm's own needs:
#   - every rendered kind: get (Helm reads the live object), create, patch (an upgrade is a three-way merge patch),
#     update (`--force` replaces), delete (objects a new version drops, `--atomic` rollbacks), list + watch (`--wait`);
#   - Secrets: Helm's release store (the default `secrets` storage driver gets, lists, creates, updates and deletes
#     the sh.helm.release.v1.* Secrets of the release);
#   - Pods, ReplicaSets: read by `--wait` to judge readiness;
#   - every permission a Role of the chart grants: Kubernetes lets a user create a Role, or bind one, only with
#     every permission it grants (RBAC escalation prevention), so the executor, rollout and Sensor Roles' rights
#     are listed here too.
# The chart renders no cluster-scoped kind; the test fails if it ever does (this identity would then need a
# ClusterRole).

resource "kubernetes_namespace_v1" "app" {
  metadata {
    name   = var.namespace
    labels = { "app.kubernetes.io/part-of" = "sentimentops" }
  }
  depends_on = [google_container_node_pool.cpu]
}

locals {
  deploy_verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
}

resource "kubernetes_role_v1" "deploy" {
  metadata {
    name      = "sentimentops-deploy"
    namespace = kubernetes_namespace_v1.app.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "sentimentops" }
  }

  # Helm's release store and the chart's Secrets (their values are never in the chart: docs/runbook.md).
  rule {
    api_groups = [""]
    resources  = ["configmaps", "secrets", "services", "serviceaccounts", "persistentvolumeclaims"]
    verbs      = local.deploy_verbs
  }
  # Read by `helm upgrade --wait`.
  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["get", "list", "watch"]
  }
  # The rollout Role grants events create: held here so the chart may create that Role.
  rule {
    api_groups = [""]
    resources  = ["events"]
    verbs      = ["create"]
  }
  rule {
    api_groups = ["apps"]
    resources  = ["deployments", "statefulsets"]
    verbs      = local.deploy_verbs
  }
  rule {
    api_groups = ["apps"]
    resources  = ["replicasets"]
    verbs      = ["get", "list", "watch"]
  }
  rule {
    api_groups = ["networking.k8s.io"]
    resources  = ["networkpolicies"]
    verbs      = local.deploy_verbs
  }
  rule {
    api_groups = ["rbac.authorization.k8s.io"]
    resources  = ["roles", "rolebindings"]
    verbs      = local.deploy_verbs
  }
  rule {
    api_groups = ["argoproj.io"]
    resources  = ["workflowtemplates", "cronworkflows", "eventsources", "sensors", "eventbus"]
    verbs      = local.deploy_verbs
  }
  # Workflows: CI submits trainings (`argo submit --from workflowtemplate/sentiment-training`) and the Sensor Role
  # grants create; no update or delete of running workflows.
  rule {
    api_groups = ["argoproj.io"]
    resources  = ["workflows"]
    verbs      = ["get", "list", "watch", "create"]
  }
  # Granted by the chart's executor Role (Argo's executor reports outputs through WorkflowTaskResults).
  rule {
    api_groups = ["argoproj.io"]
    resources  = ["workflowtaskresults"]
    verbs      = ["create", "patch"]
  }
  rule {
    api_groups = ["serving.kserve.io"]
    resources  = ["inferenceservices", "servingruntimes"]
    verbs      = local.deploy_verbs
  }
  rule {
    api_groups = ["monitoring.coreos.com"]
    resources  = ["servicemonitors", "prometheusrules"]
    verbs      = local.deploy_verbs
  }
}

resource "kubernetes_role_binding_v1" "deploy" {
  metadata {
    name      = "sentimentops-deploy"
    namespace = kubernetes_namespace_v1.app.metadata[0].name
    labels    = { "app.kubernetes.io/part-of" = "sentimentops" }
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.deploy.metadata[0].name
  }
  subject {
    api_group = "rbac.authorization.k8s.io"
    kind      = "User"
    name      = google_service_account.ci.email
  }
}
