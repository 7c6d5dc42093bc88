# Locations the chart's values need, written once (outputs below and chart_values).
locals {
  image_registry               = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
  dvc_remote                   = "gs://${google_storage_bucket.data["dvc"].name}/remote"
  mlflow_artifacts_destination = "gs://${google_storage_bucket.data["mlflow"].name}/artifacts"
  production_store             = "gs://${google_storage_bucket.data["production"].name}"
  batch_scoring_root           = "gs://${google_storage_bucket.data["scores"].name}"
}

output "cluster_name" {
  description = "GKE cluster name (`gcloud container clusters get-credentials <name> --region <region>`)."
  value       = google_container_cluster.primary.name
}

output "cluster_location" {
  description = "Region of the cluster."
  value       = google_container_cluster.primary.location
}

output "workload_identity_pool" {
  description = "The cluster's Workload Identity pool."
  value       = local.workload_pool
}

output "service_accounts" {
  description = "Role -> GSA email; set charts/sentimentops values serviceAccounts.<role>.gcpServiceAccount to these."
  value       = { for role, sa in google_service_account.workload : role => sa.email }
}

output "kubernetes_service_accounts" {
  description = "Role -> namespace/KSA name bound to that role's GSA."
  value       = { for role, r in local.workload_roles : role => "${var.namespace}/${r.ksa}" }
}

output "buckets" {
  description = "Bucket key (dvc, mlflow, argo, production, scores) -> bucket name."
  value       = { for key, b in google_storage_bucket.data : key => b.name }
}

output "image_registry" {
  description = "Registry prefix of the images (the WorkflowTemplate's image-registry parameter)."
  value       = local.image_registry
}

output "github_workload_identity_provider" {
  description = "GitHub secret/variable GCP_WORKLOAD_IDENTITY_PROVIDER (google-github-actions/auth workload_identity_provider)."
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "github_service_account" {
  description = "GitHub variable GCP_SERVICE_ACCOUNT (impersonated by CI through the provider above)."
  value       = google_service_account.ci.email
}

output "argo_artifact_bucket" {
  description = "Bucket of Argo's artifact repository (charts/sentimentops value argo.artifactRepository.gcs.bucket); the training and pipeline identities may write it."
  value       = google_storage_bucket.data["argo"].name
}

output "dvc_remote" {
  description = "DVC remote of the version step (charts/sentimentops value dvc.remote)."
  value       = local.dvc_remote
}

output "production_store" {
  description = "Production data store: captured requests and feedback labels (charts/sentimentops value production.store); the serving identity writes it, training (ingest) reads it."
  value       = local.production_store
}

output "batch_scoring_root" {
  description = "Where sentiment-batch-score reads its input and writes its scores (gs://<this>/<path>): the training identity it runs as may read and write there."
  value       = local.batch_scoring_root
}

output "mlflow_artifacts_destination" {
  description = "MLflow server's --artifacts-destination (charts/sentimentops value mlflow.artifactsDestination)."
  value       = local.mlflow_artifacts_destination
}

output "mlflow_cloudsql_instance" {
  description = "Connection name (project:region:instance) of MLflow's Cloud SQL instance: the proxy sidecar's argument (charts/sentimentops value mlflow.cloudSql.instanceConnectionName)."
  value       = google_sql_database_instance.mlflow.connection_name
}

output "mlflow_database_user" {
  description = "MLflow's IAM database user (its Google service account's email without .gserviceaccount.com; the chart derives the same from serviceAccounts.mlflow.gcpServiceAccount)."
  value       = google_sql_user.mlflow.name
}

output "namespace" {
  description = "Namespace of the chart: terraform creates it, binds the Workload Identities and the deploy Role in it."
  value       = kubernetes_namespace_v1.app.metadata[0].name
}

output "deploy_role" {
  description = "Role (in the namespace above) bound to the CI service account: what `helm upgrade` of charts/sentimentops may do."
  value       = kubernetes_role_v1.deploy.metadata[0].name
}

output "platform_releases" {
  description = "Platform release name -> chart@version installed (charts/platform/versions.yaml)."
  value       = { for name, r in local.platform : name => "${r.chart}@${r.version}" }
}

# Every value of charts/sentimentops/values-gke.yaml that names this project, from the resources above: the runbook
# writes it to a file (`terraform output -json chart_values`) and passes it to helm after values-gke.yaml.
# tests/contract/test_runbook.py checks that each key exists in the chart's values and that it covers every
# placeholder of values-gke.yaml.
output "chart_values" {
  description = "charts/sentimentops values that come from terraform (a values file: `terraform output -json chart_values > values-terraform.json`)."
  value = {
    image = {
      registry = local.image_registry
    }
    serviceAccounts = {
      training = { gcpServiceAccount = google_service_account.workload["training"].email }
      serving  = { gcpServiceAccount = google_service_account.workload["serving"].email }
      pipeline = { gcpServiceAccount = google_service_account.workload["pipeline"].email }
      mlflow   = { gcpServiceAccount = google_service_account.workload["mlflow"].email }
    }
    argo = {
      artifactRepository = {
        type = "gcs"
        gcs  = { bucket = google_storage_bucket.data["argo"].name }
      }
    }
    dvc        = { remote = local.dvc_remote }
    production = { store = local.production_store }
    mlflow = {
      artifactsDestination = local.mlflow_artifacts_destination
      cloudSql = {
        instanceConnectionName = google_sql_database_instance.mlflow.connection_name
        database               = google_sql_database.mlflow.name
      }
    }
  }
}
