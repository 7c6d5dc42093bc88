# The platform the chart runs on (Argo Workflows + Events, cert-manager, Istio + Knative + KServe,
# kube-prometheus-stack), installed into the cluster above at the versions pinned in charts/platform/versions.yaml:
# every helm_release below reads its repository, chart, version and values file from there (one home per version,
# shared with the kind harness scripts/e2e/run.sh), and depends on the release listed before it (the list is the
# install order; charts/platform/versions.yaml says why the order matters).
# tests/contract/test_platform.py checks that each release here is one of that file's, in its order.

locals {
  platform_dir = "${path.module}/../charts/platform"
  # name -> release, the releases whose `targets` include gke (absent targets: every cluster).
  platform = {
    for r in yamldecode(file("${local.platform_dir}/versions.yaml")).releases :
    r.name => r if contains(try(r.targets, ["gke"]), "gke")
  }
  # name -> the values documents of that release (its file in charts/platform/values/, when it names one).
  platform_values = {
    for name, r in local.platform :
    name => [for f in compact([try(r.values, "")]) : file("${local.platform_dir}/values/${f}")]
  }
  # Alertmanager's routes and Slack templates: the files promtool/amtool test, handed to kube-prometheus-stack as
  # they are (its alertmanager.config and templateFiles; tplConfig stays false, so Helm leaves `{{ }}` alone).
  alertmanager_dir = "${path.module}/../charts/sentimentops/files/monitoring/alertmanager"
  alertmanager_values = yamlencode({
    alertmanager = {
      config        = yamldecode(file("${local.alertmanager_dir}/alertmanager.yaml"))
      templateFiles = { for f in fileset(local.alertmanager_dir, "*.tmpl") : f => file("${local.alertmanager_dir}/${f}") }
    }
  })
}

# Credentials of the caller (gcloud application-default login or CI's federated identity): a short-lived OAuth
# token, no key. The cluster's endpoint and CA come from the cluster resource.
data "google_client_config" "current" {}

provider "kubernetes" {
  host                   = "https://${google_container_cluster.primary.endpoint}"
  token                  = data.google_client_config.current.access_token
  cluster_ca_certificate = base64decode(google_container_cluster.primary.master_auth[0].cluster_ca_certificate)
}

provider "helm" {
  kubernetes = {
    host                   = "https://${google_container_cluster.primary.endpoint}"
    token                  = data.google_client_config.current.access_token
    cluster_ca_certificate = base64decode(google_container_cluster.primary.master_auth[0].cluster_ca_certificate)
  }
}

resource "helm_release" "cert_manager" {
  name             = local.platform["cert-manager"].name
  namespace        = local.platform["cert-manager"].namespace
  repository       = local.platform["cert-manager"].repository
  chart            = local.platform["cert-manager"].chart
  version          = local.platform["cert-manager"].version
  values           = local.platform_values["cert-manager"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [google_container_node_pool.cpu]
}

resource "helm_release" "kube_prometheus_stack" {
  name             = local.platform["kube-prometheus-stack"].name
  namespace        = local.platform["kube-prometheus-stack"].namespace
  repository       = local.platform["kube-prometheus-stack"].repository
  chart            = local.platform["kube-prometheus-stack"].chart
  version          = local.platform["kube-prometheus-stack"].version
  values           = concat(local.platform_values["kube-prometheus-stack"], [local.alertmanager_values])
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.cert_manager]
}

resource "helm_release" "argo_workflows" {
  name             = local.platform["argo-workflows"].name
  namespace        = local.platform["argo-workflows"].namespace
  repository       = local.platform["argo-workflows"].repository
  chart            = local.platform["argo-workflows"].chart
  version          = local.platform["argo-workflows"].version
  values           = local.platform_values["argo-workflows"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.kube_prometheus_stack]
}

resource "helm_release" "argo_events" {
  name             = local.platform["argo-events"].name
  namespace        = local.platform["argo-events"].namespace
  repository       = local.platform["argo-events"].repository
  chart            = local.platform["argo-events"].chart
  version          = local.platform["argo-events"].version
  values           = local.platform_values["argo-events"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.argo_workflows]
}

resource "helm_release" "istio_base" {
  name             = local.platform["istio-base"].name
  namespace        = local.platform["istio-base"].namespace
  repository       = local.platform["istio-base"].repository
  chart            = local.platform["istio-base"].chart
  version          = local.platform["istio-base"].version
  values           = local.platform_values["istio-base"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.argo_events]
}

resource "helm_release" "istiod" {
  name             = local.platform["istiod"].name
  namespace        = local.platform["istiod"].namespace
  repository       = local.platform["istiod"].repository
  chart            = local.platform["istiod"].chart
  version          = local.platform["istiod"].version
  values           = local.platform_values["istiod"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.istio_base]
}

resource "helm_release" "istio_ingressgateway" {
  name             = local.platform["istio-ingressgateway"].name
  namespace        = local.platform["istio-ingressgateway"].namespace
  repository       = local.platform["istio-ingressgateway"].repository
  chart            = local.platform["istio-ingressgateway"].chart
  version          = local.platform["istio-ingressgateway"].version
  values           = local.platform_values["istio-ingressgateway"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.istiod]
}

resource "helm_release" "knative_operator" {
  name             = local.platform["knative-operator"].name
  namespace        = local.platform["knative-operator"].namespace
  repository       = local.platform["knative-operator"].repository
  chart            = local.platform["knative-operator"].chart
  version          = local.platform["knative-operator"].version
  values           = local.platform_values["knative-operator"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.istio_ingressgateway]
}

# A chart of this repository (repository ""): the KnativeServing resource; `version` is the Serving version the
# operator installs, handed over as a value (a local chart has no version to pin).
resource "helm_release" "knative_serving" {
  name             = local.platform["knative-serving"].name
  namespace        = local.platform["knative-serving"].namespace
  chart            = "${local.platform_dir}/${local.platform["knative-serving"].chart}"
  values           = concat(local.platform_values["knative-serving"], [yamlencode({ version = local.platform["knative-serving"].version })])
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.knative_operator]
}

resource "helm_release" "kserve_crd" {
  name             = local.platform["kserve-crd"].name
  namespace        = local.platform["kserve-crd"].namespace
  repository       = local.platform["kserve-crd"].repository
  chart            = local.platform["kserve-crd"].chart
  version          = local.platform["kserve-crd"].version
  values           = local.platform_values["kserve-crd"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.knative_serving]
}

resource "helm_release" "kserve" {
  name             = local.platform["kserve"].name
  namespace        = local.platform["kserve"].namespace
  repository       = local.platform["kserve"].repository
  chart            = local.platform["kserve"].chart
  version          = local.platform["kserve"].version
  values           = local.platform_values["kserve"]
  create_namespace = true
  atomic           = true
  timeout          = 900
  depends_on       = [helm_release.kserve_crd]
}
