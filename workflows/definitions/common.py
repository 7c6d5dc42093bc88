"""What every SentimentOps WorkflowTemplate shares (training, rollout, triggers): the package version in names and
tags, workflow parameters, image parameters, the template-level settings, and the container paths of artifacts.

The definitions import this module; none imports another definition upward (tests/contract/test_layout.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from hera.workflows import Parameter
from hera.workflows.models import Metadata, Mutex, PodGC, PodSecurityContext, Synchronization, TTLStrategy

# Artifacts live at fixed container paths; the args reference them through {{inputs/outputs.artifacts.X.path}},
# so the local runner can map them into its run folder without knowing these strings.
INPUT_ROOT = "/tmp/sentimentops/inputs"
OUTPUT_ROOT = "/tmp/sentimentops/outputs"

def package_version() -> str:
    """The installed `sentimentops` version (the template name and the default image tag carry it)."""
    try:
        return version("sentimentops")
    except PackageNotFoundError:  # a bare checkout without `pip install -e .`
        return "0.0.0"


def dns_label(text: str) -> str:
    """Lower-case DNS-1123 label: `0.1.0` -> `0-1-0` (Kubernetes object names allow no dots in labels)."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-")


@dataclass(frozen=True)
class WorkflowParam:
    name: str
    default: str
    description: str
    enum: tuple[str, ...] = ()


PROFILE_PARAM = WorkflowParam("profile", "gke", "Config profile exported as SENTIMENTOPS_PROFILE (gke in the cluster)",
                              ("gke", "local"))


def image_params(pkg_version: str) -> list[WorkflowParam]:
    """Where every template's stage images come from (sentimentops-<stage>:<tag>)."""
    return [WorkflowParam("image-registry", "europe-west4-docker.pkg.dev/sentimentops/sentimentops",
                          "Registry holding the per-stage images sentimentops-<stage>"),
            WorkflowParam("image-tag", pkg_version, "Tag of the per-stage images (defaults to the package version)")]


def template_settings(component: str, pkg_version: str, params: list[WorkflowParam], service_account: str,
                      mutex: str) -> dict:
    """What every SentimentOps WorkflowTemplate shares: labels (also on every Workflow started from it, so `argo
    list -l` finds runs by version), its parameters, one run at a time (mutex), a success kept a day (the UI link
    in the Slack message stays valid) and a failure a week, successful pods removed at once (failed ones stay for
    `kubectl logs`), the chart's Workload Identity ServiceAccount, and pods that refuse root (the stage images run
    as uid 10001, images/; checkov CKV_ARGO_1/2)."""
    labels = {"app.kubernetes.io/name": "sentimentops", "app.kubernetes.io/component": component,
              "app.kubernetes.io/version": pkg_version}
    return {
        "labels": labels,
        "arguments": [Parameter(name=p.name, value=p.default, description=p.description, enum=list(p.enum) or None)
                      for p in params],
        "workflow_metadata": Metadata(labels=labels),
        "synchronization": Synchronization(mutexes=[Mutex(name=mutex)]),
        "ttl_strategy": TTLStrategy(seconds_after_success=86400, seconds_after_failure=604800),
        "pod_gc": PodGC(strategy="OnPodSuccess"),
        "service_account_name": service_account,
        "security_context": PodSecurityContext(run_as_non_root=True, run_as_user=10001, run_as_group=10001,
                                               fs_group=10001),
    }
