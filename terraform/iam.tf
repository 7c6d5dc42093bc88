# One Google service account per role, each bound to exactly one Kubernetes ServiceAccount of the chart through
# Workload Identity, with bucket- or repository-level grants only. No service account keys exist anywhere:
# pods use Workload Identity, GitHub Actions uses Workload Identity Federation (OIDC).

locals {
  # role -> Kubernetes ServiceAccount (charts/sentimentops/values.yaml serviceAccounts.<role>.name) and purpose
  workload_roles = {
    training = { ksa = "sentimentops-training", purpose = "Argo training steps: DVC remote, Argo artifacts" }
    serving  = { ksa = "sentimentops-serving", purpose = "KServe predictor: reads models, writes production data" }
    pipeline = { ksa = "sentimentops-pipeline", purpose = "Rollout and drift workflows: Argo artifacts" }
    mlflow   = { ksa = "sentimentops-mlflow", purpose = "MLflow server: artifact store" }
  }

  # bucket key -> role -> bucket-level IAM role
  bucket_grants = {
    "dvc/training"    = { bucket = "dvc", sa = "training", role = "roles/storage.objectUser" }
    "argo/training"   = { bucket = "argo", sa = "training", role = "roles/storage.objectUser" }
    "argo/pipeline"   = { bucket = "argo", sa = "pipeline", role = "roles/storage.objectUser" }
    "mlflow/mlflow"   = { bucket = "mlflow", sa = "mlflow", role = "roles/storage.objectUser" }
    "mlflow/serving"  = { bucket = "mlflow", sa = "serving", role = "roles/storage.objectViewer" }
    "mlflow/pipeline" = { bucket = "mlflow", sa = "pipeline", role = "roles/storage.objectViewer" }
    # The predictor adds capture and feedback parts (never replaces or deletes one: creator, not user) and lists
    # and reads them; ingest (the training identity) reads them. The rollout judges feedback through Prometheus,
    # not the store: the pipeline identity gets nothing here (the bucket holds raw user text).
    "production/serving-create" = { bucket = "production", sa = "serving", role = "roles/storage.objectCreator" }
    "production/serving-read"   = { bucket = "production", sa = "serving", role = "roles/storage.objectViewer" }
    "production/training"       = { bucket = "production", sa = "training", role = "roles/storage.objectViewer" }
    # sentiment-batch-score runs as the training identity: it reads its input and writes its shards and output.
    "scores/training" = { bucket = "scores", sa = "training", role = "roles/storage.objectUser" }
  }

  # What a GKE node needs and nothing more (Google's "least privilege node service account" list).
  node_project_roles = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
  ])
}

resource "google_service_account" "nodes" {
  account_id   = "${var.cluster_name}-nodes"
  display_name = "SentimentOps GKE nodes (logging, metrics, image pulls)"
}

resource "google_project_iam_member" "nodes" {
  for_each = local.node_project_roles
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_service_account" "workload" {
  for_each     = local.workload_roles
  account_id   = "so-${each.key}"
  display_name = "SentimentOps ${each.key}: ${each.value.purpose}"
}

# KSA <namespace>/<name> may act as its GSA (and only that one).
resource "google_service_account_iam_member" "workload_identity" {
  for_each           = local.workload_roles
  service_account_id = google_service_account.workload[each.key].name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${local.workload_pool}[${var.namespace}/${each.value.ksa}]"
  depends_on         = [google_container_cluster.primary]
}

resource "google_storage_bucket_iam_member" "workload" {
  for_each = local.bucket_grants
  bucket   = google_storage_bucket.data[each.value.bucket].name
  role     = each.value.role
  member   = "serviceAccount:${google_service_account.workload[each.value.sa].email}"
}

# ---- GitHub Actions: Workload Identity Federation, restricted to one repository ----

resource "google_iam_workload_identity_pool" "github" {
  workload_identity_pool_id = "github"
  display_name              = "GitHub Actions"
  depends_on                = [google_project_service.apis]
}

resource "google_iam_workload_identity_pool_provider" "github" {
  # checkov:skip=CKV_GCP_125:the condition pins the subject to repo:<github_repository>:environment:<github_environment>; checkov cannot resolve the variables inside the literal
  workload_identity_pool_id          = google_iam_workload_identity_pool.github.workload_identity_pool_id
  workload_identity_pool_provider_id = "github-oidc"
  display_name                       = "GitHub OIDC"
  attribute_mapping = {
    "google.subject"        = "assertion.sub"
    "attribute.repository"  = "assertion.repository"
    "attribute.ref"         = "assertion.ref"
    "attribute.environment" = "assertion.environment"
  }
  # Only jobs of this repository that run in the protected GitHub environment (release branch/tag rules and
  # reviewers live there) get a token; pull requests from forks never do.
  attribute_condition = "assertion.sub == \"repo:${var.github_repository}:environment:${var.github_environment}\""
  oidc {
    issuer_uri = "https://token.actions.githubusercontent.com"
  }
}

resource "google_service_account" "ci" {
  account_id   = "so-ci"
  display_name = "SentimentOps CI (GitHub Actions): push images, apply templates, submit workflows"
}

resource "google_service_account_iam_member" "ci_federation" {
  service_account_id = google_service_account.ci.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.github.name}/attribute.repository/${var.github_repository}"
}

resource "google_artifact_registry_repository_iam_member" "ci_push" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.ci.email}"
}

# Enough to fetch cluster credentials; what CI may do inside the cluster is the Role `sentimentops-deploy`
# (deploy.tf: namespace-scoped RBAC bound to this service account's email, created outside the chart).
resource "google_project_iam_member" "ci_cluster_viewer" {
  project = var.project_id
  role    = "roles/container.clusterViewer"
  member  = "serviceAccount:${google_service_account.ci.email}"
}
