"""The digest of the image a step runs in, read from its own pod's status: best effort, never a step's failure.

A template names its image by tag (`<registry>/sentimentops-train:<tag>`); a tag can be moved, a digest cannot.
The kubelet records what it actually pulled in the pod's `status.containerStatuses[].imageID`
(`<registry>/<repo>@sha256:<64 hex>`), so the step asks the Kubernetes API for its own pod (found by its name,
HOSTNAME; the ServiceAccount's token; `get` on `pods` in charts/sentimentops/templates/rbac.yaml) and records
`ref@sha256:...`. Anything that goes wrong (no API, no permission, a slow server: 5 s at most) leaves the ref as it
is: lineage is never worth a failed training run.

`image_digest` is the pure parser (a pod's JSON in, a digest out); `fetch_pod` the thin HTTP call.
"""
from __future__ import annotations

import json
import os
import re
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from sentimentops.steps.core.logs import get_logger

log = get_logger(__name__)
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # token, ca.crt, namespace (every pod has them)
# The pod's own name: HOSTNAME, which Kubernetes sets to the pod's name in every container (truncated to 63
# characters: a longer name misses, and the ref stays as it is).
POD_NAME_ENV = "HOSTNAME"
MAIN_CONTAINER = "main"  # the container Argo runs a template's command in (init and wait are its own)
TIMEOUT_S = 5.0
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def image_digest(pod: dict[str, Any], ref: str) -> str | None:
    """`sha256:<hex>` of the container running `ref` (else of Argo's `main` container) in a pod's JSON, or None
    when the status does not hold one yet (a container still pulling has an empty imageID)."""
    statuses = [s for s in (pod.get("status") or {}).get("containerStatuses") or [] if isinstance(s, dict)]
    chosen = (next((s for s in statuses if s.get("image") == ref), None)
              or next((s for s in statuses if s.get("name") == MAIN_CONTAINER), None))
    found = _DIGEST.search(str((chosen or {}).get("imageID") or ""))
    return found.group(0) if found else None


def with_digest(ref: str, digest: str | None) -> str:
    """`ref@digest`; a ref already pinned by digest, or no digest, stays as it is."""
    return ref if not digest or "@" in ref else f"{ref}@{digest}"


def fetch_pod(api: str, namespace: str, name: str, token: str, ca_file: Path | None = None,
              timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """GET /api/v1/namespaces/<ns>/pods/<name> with a bearer token (TLS verified against `ca_file` when given)."""
    request = urllib.request.Request(f"{api.rstrip('/')}/api/v1/namespaces/{namespace}/pods/{name}",
                                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read())


def in_cluster_api() -> str | None:
    """The API server's URL as Kubernetes tells every pod (KUBERNETES_SERVICE_HOST/PORT), or None outside one."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def pinned_image(ref: str, *, api: str | None = None, sa_dir: Path = SA_DIR, timeout: float = TIMEOUT_S) -> str:
    """`ref@sha256:...` when this pod's status tells the digest, else `ref`. Never raises."""
    pod_name = ""
    try:
        pod_name = os.environ.get(POD_NAME_ENV, "").strip()
        api = api or in_cluster_api()
        token_file = sa_dir / "token"
        if not (ref and pod_name and api and token_file.is_file()):
            return ref
        namespace = (sa_dir / "namespace").read_text().strip()
        ca = sa_dir / "ca.crt"
        pod = fetch_pod(api, namespace, pod_name, token_file.read_text().strip(),
                        ca if api.startswith("https:") and ca.is_file() else None, timeout)
        return with_digest(ref, image_digest(pod, ref))
    except Exception as err:  # noqa: BLE001 - best effort by design: any failure keeps the ref
        log.warning("image digest of %s not read from pod %s: %s", ref, pod_name, err)
        return ref
