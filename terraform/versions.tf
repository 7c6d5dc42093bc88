terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.10"
    }
    # platform.tf (the platform releases) and deploy.tf (the deploy identity's Role), against the cluster above.
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.35"
    }
  }

  # State in a bucket created once by hand (`gsutil mb -b on --pap enforced gs://<project>-tfstate`):
  # `terraform init -backend-config="bucket=<project>-tfstate"`.
  backend "gcs" {
    prefix = "sentimentops"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
