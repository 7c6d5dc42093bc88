# Cloud SQL for PostgreSQL: MLflow's backend store (tracking + registry) on GKE. Private IP only, on the cluster's
# VPC through private services access; the MLflow server reaches it through the Cloud SQL Auth Proxy sidecar
# (charts/sentimentops templates/mlflow.yaml) as its own Google service account (IAM database authentication):
# no password exists anywhere, so there is no Secret Manager secret and no Kubernetes Secret for it.

locals {
  cloudsql_region = var.cloudsql_region != "" ? var.cloudsql_region : var.region
  # Cloud SQL names an IAM service-account database user by the account's email without `.gserviceaccount.com`
  # (https://cloud.google.com/sql/docs/postgres/add-manage-iam-users); the chart derives the same name from
  # serviceAccounts.mlflow.gcpServiceAccount, so the pod's identity and the database user cannot drift apart.
  mlflow_db_user = trimsuffix(google_service_account.workload["mlflow"].email, ".gserviceaccount.com")
}

resource "google_project_service" "cloudsql" {
  for_each = toset([
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

# Private services access: a /20 of the VPC reserved for Google-managed services, peered with Google's network.
# The range must not overlap the node, pod or service ranges (main.tf: 10.10/20, 10.20/14, 10.30/20).
resource "google_compute_global_address" "private_services" {
  name          = "${var.cluster_name}-private-services"
  network       = google_compute_network.vpc.id
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  address       = "10.40.0.0"
  prefix_length = 20
}

resource "google_service_networking_connection" "private_services" {
  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]
  # Google refuses to delete a peering a Cloud SQL instance still uses; on destroy, leave it to go with the VPC.
  deletion_policy = "ABANDON"
  depends_on      = [google_project_service.cloudsql]
}

resource "google_sql_database_instance" "mlflow" {
  name                = "${var.cluster_name}-mlflow"
  region              = local.cloudsql_region
  database_version    = "POSTGRES_18"
  deletion_protection = true

  lifecycle {
    # Each edition takes its own tiers; the API would refuse the mismatch only at apply time.
    precondition {
      condition     = (var.cloudsql_edition == "ENTERPRISE_PLUS") == startswith(var.cloudsql_tier, "db-perf-optimized-N-")
      error_message = "cloudsql_tier does not fit cloudsql_edition: ENTERPRISE takes db-custom-* tiers, ENTERPRISE_PLUS db-perf-optimized-N-*."
    }
  }

  settings {
    tier                        = var.cloudsql_tier
    edition                     = var.cloudsql_edition
    availability_type           = var.cloudsql_availability_type
    disk_autoresize             = true
    deletion_protection_enabled = true
    user_labels                 = local.labels

    ip_configuration {
      # No public IP: reachable only from the VPC (the proxy sidecar connects with --private-ip).
      ipv4_enabled    = false
      private_network = google_compute_network.vpc.id
      # Only TLS connections with a client certificate the instance trusts: the Auth Proxy presents the ephemeral
      # certificate it fetches through the Admin API (cloudsql.client), so nothing else can even start a session.
      ssl_mode = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    }

    # Daily backups kept 14 days, and point-in-time recovery from the write-ahead log of the last 7 days.
    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "02:00"
      transaction_log_retention_days = 7

      backup_retention_settings {
        retained_backups = 14
      }
    }

    maintenance_window {
      day  = 7
      hour = 3
    }

    insights_config {
      query_insights_enabled = true
    }

    # IAM database authentication: the MLflow Google service account logs in with its OAuth token.
    database_flags {
      name  = "cloudsql.iam_authentication"
      value = "on"
    }

    # Connection, lock and temp-file logging (CIS GCP 6.2.x: what checkov's CKV_GCP_51-57, CKV_GCP_108-111 and CKV2_GCP_13 ask for).
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }

    database_flags {
      name  = "log_connections"
      value = "on"
    }

    database_flags {
      name  = "log_disconnections"
      value = "on"
    }

    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }

    database_flags {
      name  = "log_min_messages"
      value = "error"
    }

    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }

    database_flags {
      name  = "log_temp_files"
      value = "0"
    }

    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }

    database_flags {
      name  = "log_duration"
      value = "on"
    }

    database_flags {
      name  = "log_hostname"
      value = "on"
    }

    database_flags {
      name  = "log_statement"
      value = "ddl"
    }

    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database" "mlflow" {
  name     = "mlflow"
  instance = google_sql_database_instance.mlflow.name
}

# The MLflow server's database user: its Google service account (type CLOUD_IAM_SERVICE_ACCOUNT, no password).
resource "google_sql_user" "mlflow" {
  name     = local.mlflow_db_user
  instance = google_sql_database_instance.mlflow.name
  type     = "CLOUD_IAM_SERVICE_ACCOUNT"
}

# What the proxy needs to connect (cloudsql.client: the instance's connection info and ephemeral certificates) and
# to log in with IAM (cloudsql.instanceUser). Project-level: Cloud SQL has no instance-level IAM policy; an IAM
# condition on the instance name narrows the grant to this instance.
resource "google_project_iam_member" "mlflow_cloudsql" {
  for_each = toset(["roles/cloudsql.client", "roles/cloudsql.instanceUser"])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.workload["mlflow"].email}"

  condition {
    title      = "only-${google_sql_database_instance.mlflow.name}"
    expression = "resource.name == \"projects/${var.project_id}/instances/${google_sql_database_instance.mlflow.name}\" && resource.service == \"sqladmin.googleapis.com\""
  }
}
