variable "project_id" {
  description = "GCP project that hosts the cluster, buckets and registry."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id: 6-30 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region for the cluster, buckets and Artifact Registry (pick one with L4 or T4 GPUs)."
  type        = string
  default     = "europe-west4"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must look like europe-west4 or us-central1."
  }
}

variable "node_zones" {
  description = "Zones of the region where node pools run (the GPU type must be offered in each)."
  type        = list(string)
  default     = ["europe-west4-a"]

  validation {
    condition     = length(var.node_zones) > 0 && alltrue([for z in var.node_zones : can(regex("^[a-z]+-[a-z]+[0-9]-[a-z]$", z))])
    error_message = "node_zones must be a non-empty list of zones such as europe-west4-a."
  }
}

variable "cluster_name" {
  description = "GKE cluster name."
  type        = string
  default     = "sentimentops"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be a lower-case DNS label of at most 40 characters."
  }
}

variable "namespace" {
  description = "Kubernetes namespace of the chart (charts/sentimentops); the Workload Identity bindings name it."
  type        = string
  default     = "sentimentops"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label."
  }
}

variable "master_authorized_cidrs" {
  description = "CIDR blocks allowed to reach the control plane (office VPN, CI egress)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for c in values(var.master_authorized_cidrs) : can(cidrhost(c, 0))])
    error_message = "every master_authorized_cidrs value must be a CIDR block."
  }
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool (Argo, KServe predictors, MLflow, Prometheus, non-GPU steps)."
  type        = string
  default     = "e2-standard-4"
}

variable "cpu_min_nodes" {
  description = "Minimum CPU nodes per zone."
  type        = number
  default     = 1

  validation {
    condition     = var.cpu_min_nodes >= 1
    error_message = "cpu_min_nodes must be at least 1: the system pods and the predictor live there."
  }
}

variable "cpu_max_nodes" {
  description = "Maximum CPU nodes per zone."
  type        = number
  default     = 4

  validation {
    condition     = var.cpu_max_nodes >= 1 && var.cpu_max_nodes <= 50
    error_message = "cpu_max_nodes must be between 1 and 50."
  }
}

variable "gpu_type" {
  description = "Accelerator of the training pool: nvidia-l4 (g2-standard-*) or nvidia-tesla-t4 (n1-standard-*)."
  type        = string
  default     = "nvidia-l4"

  validation {
    condition     = contains(["nvidia-l4", "nvidia-tesla-t4"], var.gpu_type)
    error_message = "gpu_type must be nvidia-l4 or nvidia-tesla-t4."
  }
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool; must match gpu_type (g2-standard-8 for L4, n1-standard-8 for T4)."
  type        = string
  default     = "g2-standard-8"

  validation {
    condition     = can(regex("^(g2|n1)-(standard|highmem)-[0-9]+$", var.gpu_machine_type))
    error_message = "gpu_machine_type must be a g2-* (L4) or n1-* (T4) machine type."
  }
}

variable "gpu_max_nodes" {
  description = "Maximum GPU nodes per zone (the pool scales from 0: no GPU is paid for between retrains)."
  type        = number
  default     = 1

  validation {
    condition     = var.gpu_max_nodes >= 1 && var.gpu_max_nodes <= 8
    error_message = "gpu_max_nodes must be between 1 and 8."
  }
}

variable "gpu_spot" {
  description = "Run the GPU pool on Spot VMs (cheaper; preemption is covered by the train step's retryStrategy)."
  type        = bool
  default     = true
}

variable "bucket_prefix" {
  description = "Prefix of the bucket names (globally unique): <prefix>-dvc, <prefix>-mlflow, <prefix>-argo."
  type        = string
  default     = ""

  validation {
    condition     = var.bucket_prefix == "" || can(regex("^[a-z0-9][a-z0-9-]{2,40}$", var.bucket_prefix))
    error_message = "bucket_prefix must be empty (the project id is used) or 3-41 lower-case letters, digits or hyphens."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept before the lifecycle rule deletes it."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "argo_artifact_days" {
  description = "Days intermediate Argo artifacts (datasets, models between steps) are kept."
  type        = number
  default     = 14

  validation {
    condition     = var.argo_artifact_days >= 1
    error_message = "argo_artifact_days must be at least 1."
  }
}

variable "capture_retention_days" {
  description = "Days captured request texts (captures/ in the production bucket: raw user text) are kept; feedback labels are kept."
  type        = number
  default     = 30

  validation {
    condition     = var.capture_retention_days >= 1
    error_message = "capture_retention_days must be at least 1."
  }
}

variable "cloudsql_region" {
  description = "Region of MLflow's Cloud SQL instance; empty: var.region (beside the cluster, the lowest latency)."
  type        = string
  default     = ""

  validation {
    condition     = var.cloudsql_region == "" || can(regex("^[a-z]+-[a-z]+[0-9]$", var.cloudsql_region))
    error_message = "cloudsql_region must be empty (var.region) or a region such as europe-west4."
  }
}

variable "cloudsql_edition" {
  description = "Cloud SQL edition of MLflow's instance: ENTERPRISE (db-custom-* tiers) or ENTERPRISE_PLUS (db-perf-optimized-N-*)."
  type        = string
  default     = "ENTERPRISE"

  validation {
    condition     = contains(["ENTERPRISE", "ENTERPRISE_PLUS"], var.cloudsql_edition)
    error_message = "cloudsql_edition must be ENTERPRISE or ENTERPRISE_PLUS."
  }
}

variable "cloudsql_tier" {
  description = "Machine tier of MLflow's Cloud SQL instance; MLflow's metadata is small: 1 vCPU, 3.75 GB by default."
  type        = string
  default     = "db-custom-1-3840"

  validation {
    condition     = can(regex("^db-(custom-[0-9]+-[0-9]+|perf-optimized-N-[0-9]+)$", var.cloudsql_tier))
    error_message = "cloudsql_tier must be a dedicated-core tier: db-custom-<vCPUs>-<MB> (ENTERPRISE) or db-perf-optimized-N-<vCPUs> (ENTERPRISE_PLUS)."
  }
}

variable "cloudsql_availability_type" {
  description = "ZONAL (one zone) or REGIONAL (a standby in a second zone, automatic failover, twice the price)."
  type        = string
  default     = "ZONAL"

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.cloudsql_availability_type)
    error_message = "cloudsql_availability_type must be ZONAL or REGIONAL."
  }
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose Actions may push images and deploy (Workload Identity Federation)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name."
  }
}

variable "github_environment" {
  description = "GitHub environment of the deploy jobs (.github/workflows/*: `environment: production`); only its jobs may authenticate."
  type        = string
  default     = "production"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+$", var.github_environment))
    error_message = "github_environment must be a GitHub environment name."
  }
}

variable "labels" {
  description = "Labels added to every labelled resource."
  type        = map(string)
  default     = {}
}
