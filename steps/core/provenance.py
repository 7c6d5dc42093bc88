"""Where a step's code and image came from: the commit (`git_sha`) and the image it runs in (`current_image`).

Every manifest records both (core.manifests), every MLflow run the commit (core.tracking); `sentimentops lineage`
shows them. Only the standard library here: the serve image (no pydantic models needed for this) may import it.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_SHA_ENV = "SENTIMENTOPS_GIT_SHA"  # baked into every image (ARG GIT_SHA -> ENV; .git is not in the build context)
IMAGE_ENV = "SENTIMENTOPS_IMAGE"  # the image a step runs in: the templates set it to the container's own image


def git_sha() -> str:
    """The commit this code came from: SENTIMENTOPS_GIT_SHA (baked into images; empty = unset), else `git rev-parse
    HEAD` in the folder of this very file (not the cwd: the local runner runs steps from run folders, and a cwd
    outside the checkout would name another repository or none), else "unknown" (an installed wheel, no git)."""
    if sha := os.environ.get(GIT_SHA_ENV, "").strip():
        return sha
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def current_image() -> str:
    """The image this step runs in: SENTIMENTOPS_IMAGE (the templates set it to the container's own image
    expression) with its digest when the pod's status tells it (core.podimage: best effort, never fails a step).
    Empty outside a Kubernetes pod: the local runner substitutes the same template env but runs the step on this
    machine, in no image."""
    ref = os.environ.get(IMAGE_ENV, "").strip()
    if not ref or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return ""
    from sentimentops.steps.core.podimage import pinned_image

    return pinned_image(ref)
