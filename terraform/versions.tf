terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.10"
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
