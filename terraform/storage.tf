# Buckets: the DVC remote, MLflow's artifact store, Argo's artifact repository, the production data store and the
# batch-scoring bucket. All
# private (public access prevention enforced, uniform access), versioned, encrypted with the rotated storage key and
# access-logged.

locals {
  # prefix_days: objects under a prefix deleted after that many days (captured request texts are raw user text:
  # kept only as long as capture_retention_days; feedback labels stay, they are training data).
  buckets = {
    dvc        = { purpose = "DVC remote (dataset snapshots)", age_days = 0, prefix_days = {} }
    mlflow     = { purpose = "MLflow artifacts (models, reports)", age_days = 0, prefix_days = {} }
    argo       = { purpose = "Argo artifacts (intermediate step outputs)", age_days = var.argo_artifact_days, prefix_days = {} }
    production = { purpose = "Production data (captured requests, feedback labels)", age_days = 0, prefix_days = { "captures/" = var.capture_retention_days } }
    scores     = { purpose = "Batch scoring inputs and outputs (sentiment-batch-score)", age_days = 0, prefix_days = {} }
  }
}

resource "google_storage_bucket" "logs" {
  # checkov:skip=CKV_GCP_62:this is the access-log sink of the other buckets; logging it into itself would loop
  name                        = "${local.bucket_prefix}-access-logs"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  versioning {
    enabled = true
  }

  encryption {
    default_kms_key_name = google_kms_crypto_key.storage.id
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.storage_agent]
}

resource "google_storage_bucket" "data" {
  for_each                    = local.buckets
  name                        = "${local.bucket_prefix}-${each.key}"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = merge(local.labels, { purpose = each.key })

  versioning {
    enabled = true
  }

  encryption {
    default_kms_key_name = google_kms_crypto_key.storage.id
  }

  logging {
    log_bucket        = google_storage_bucket.logs.name
    log_object_prefix = each.key
  }

  # Replaced or deleted versions are kept for a grace period, then removed.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  # Only the Argo bucket holds disposable objects: step outputs that DVC and MLflow already keep.
  dynamic "lifecycle_rule" {
    for_each = each.value.age_days > 0 ? [each.value.age_days] : []
    content {
      condition {
        age = lifecycle_rule.value
      }
      action {
        type = "Delete"
      }
    }
  }

  # The production bucket's captured requests expire (buckets.prefix_days); its feedback labels do not.
  dynamic "lifecycle_rule" {
    for_each = each.value.prefix_days
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = [lifecycle_rule.key]
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_kms_crypto_key_iam_member.storage_agent]
}

resource "google_artifact_registry_repository" "images" {
  repository_id = "sentimentops"
  location      = var.region
  format        = "DOCKER"
  description   = "Per-stage images (sentimentops-<stage>), the training and the serving image; tagged with the git SHA"
  kms_key_name  = google_kms_crypto_key.storage.id
  labels        = local.labels

  docker_config {
    # A SHA or release tag always names the same image: what ran can be traced back to a commit.
    immutable_tags = true
  }

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 30
    }
  }

  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis, google_kms_crypto_key_iam_member.registry_agent]
}
