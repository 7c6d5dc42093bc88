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
  description = "Bucket key (dvc, mlflow, argo) -> bucket name."
  value       = { for key, b in google_storage_bucket.data : key => b.name }
}

output "image_registry" {
  description = "Registry prefix of the images (the WorkflowTemplate's image-registry parameter)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "github_workload_identity_provider" {
  description = "GitHub secret/variable GCP_WORKLOAD_IDENTITY_PROVIDER (google-github-actions/auth workload_identity_provider)."
  value       = google_iam_workload_identity_pool_provider.github.name
}

output "github_service_account" {
  description = "GitHub variable GCP_SERVICE_ACCOUNT (impersonated by CI through the provider above)."
  value       = google_service_account.ci.email
}
