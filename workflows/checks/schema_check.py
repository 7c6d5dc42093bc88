"""Strict offline validation of cluster manifests against the upstream schemas committed in workflows/schemas.

Upstream schemas never set `additionalProperties: false`, so a misspelled field (`retryStrategyy`) passes
them and is silently dropped by the API server. Like kubeconform's `--strict`, every object schema that lists
`properties` is closed in memory (except `x-kubernetes-preserve-unknown-fields` ones), and the known upstream
schema bugs recorded in workflows/schemas/README.md are patched in memory. One table (SOURCES) maps
apiVersion + kind to a schema file, so later manifests (CronWorkflow, EventSource, Sensor, InferenceService,
PrometheusRule, ServiceMonitor) reuse the same code: `manifest_errors(doc)` or `check_file(path)`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

from sentimentops.workflows.argo.spec import sibling_templates
from sentimentops.workflows.checks.semantic_check import reference_errors, semantic_errors

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 2-3 MB: the C loader is ~10x faster


def schemas_dir() -> Path:
    """The schemas committed beside this module (workflows/schemas: pinned upstream files, see its README.md);
    $SENTIMENTOPS_SCHEMAS_DIR, when set, is an optional override (e.g. to try newer upstream schemas)."""
    env = os.environ.get("SENTIMENTOPS_SCHEMAS_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "schemas"
    if not path.is_dir():
        raise FileNotFoundError(f"schemas not found at {path}"
                                + ("; unset SENTIMENTOPS_SCHEMAS_DIR" if env else "; run `make schemas`"))
    return path


# ---- in-memory fixes for upstream schema bugs (each observed, see workflows/schemas/README.md) -------------

def _fix_int_or_string(root: dict) -> None:
    # schema.json types IntOrString as string, rejecting `limit: 2` and `port: 80` that the cluster accepts.
    defs = root.get("definitions", {})
    if "io.k8s.apimachinery.pkg.util.intstr.IntOrString" in defs:
        defs["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"anyOf": [{"type": "string"},
                                                                             {"type": "integer"}]}


def _fix_webhook_url(root: dict) -> None:
    # Argo Events requires `url` on a webhook (WebhookContext and WebhookEventSource, which inlines it), but
    # its own webhook example omits it and works.
    for name in ("WebhookContext", "WebhookEventSource"):
        ctx = root.get("definitions", {}).get(f"io.argoproj.events.v1alpha1.{name}", {})
        if "url" in ctx.get("required", []):
            ctx["required"] = [r for r in ctx["required"] if r != "url"]


def _fix_inline_regex_flags(node: object) -> None:
    # `^(?i)(abort|warn)?$` (prometheus-operator): Python >= 3.11 rejects global flags after `^`.
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):
            node["pattern"] = "(?i)^" + pattern[len("^(?i)"):]
        for value in node.values():
            _fix_inline_regex_flags(value)
    elif isinstance(node, list):
        for value in node:
            _fix_inline_regex_flags(value)


def _fix_canary_percent(node: object) -> None:
    # KServe's CRD has no bounds on canaryTrafficPercent (150 passes); its webhook enforces 0..100.
    if isinstance(node, dict):
        prop = node.get("properties", {}).get("canaryTrafficPercent") if isinstance(node.get("properties"),
                                                                                      dict) else None
        if isinstance(prop, dict):
            prop.update(minimum=0, maximum=100)
        for value in node.values():
            _fix_canary_percent(value)
    elif isinstance(node, list):
        for value in node:
            _fix_canary_percent(value)


@dataclass(frozen=True)
class SchemaSource:
    file: str  # relative to schemas_dir()
    definition: str | None = None  # set for JSON Schema files with `definitions`; None: a CRD (openAPIV3Schema)
    fixes: tuple[Callable[[dict], None], ...] = ()


_WF = "argo-workflows/schema.json"
_EV = "argo-events/schema.json"
SOURCES: dict[tuple[str, str], SchemaSource] = {
    ("argoproj.io/v1alpha1", kind): SchemaSource(_WF, f"io.argoproj.workflow.v1alpha1.{kind}", (_fix_int_or_string,))
    for kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow")
} | {
    ("argoproj.io/v1alpha1", kind): SchemaSource(
        _EV, f"io.argoproj.events.v1alpha1.{kind}", (_fix_int_or_string, _fix_webhook_url))
    for kind in ("Sensor", "EventSource", "EventBus")
} | {
    ("serving.kserve.io/v1beta1", "InferenceService"): SchemaSource(
        "kserve/serving.kserve.io_inferenceservices.yaml", fixes=(_fix_canary_percent,)),
} | {
    ("monitoring.coreos.com/v1", kind): SchemaSource(
        f"prometheus-operator/monitoring.coreos.com_{kind.lower()}s.yaml", fixes=(_fix_inline_regex_flags,))
    for kind in ("PrometheusRule", "ServiceMonitor", "PodMonitor")
}

# Keywords whose values are schemas: walking only these keeps a *property named* "properties" (as in
# JSONSchemaProps) from being mistaken for the keyword.
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions", "$defs")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "additionalItems", "not", "if", "then", "else", "contains")


def strictify(node: object) -> None:
    """Close every object schema that lists properties (in place)."""
    if not isinstance(node, dict):
        return
    if (isinstance(node.get("properties"), dict) and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    for key in _SCHEMA_MAPS:
        for child in (node.get(key) or {}).values():
            strictify(child)
    for key in _SCHEMA_LISTS:
        for child in node.get(key) or ():
            strictify(child)
    for key in _SCHEMA_ONE:
        child = node.get(key)
        for c in child if isinstance(child, list) else [child]:
            strictify(c)


@lru_cache(maxsize=4)
def _load(file: str) -> dict:
    path = schemas_dir() / file
    with open(path) as fh:
        return json.load(fh) if path.suffix == ".json" else yaml.load(fh, Loader=_Loader)


@lru_cache(maxsize=16)
def strict_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    """Draft 7 validator for one kind: the CRDs are Draft 7 (schemas/README.md), and schema.json uses nothing newer."""
    source = SOURCES.get((api_version, kind))
    if source is None:
        known = ", ".join(f"{a}/{k}" for a, k in SOURCES)
        raise KeyError(f"no schema for {api_version} {kind}; known: {known}")
    raw = copy.deepcopy(_load(source.file))
    if source.definition:
        schema = {"$ref": f"#/definitions/{source.definition}", "definitions": raw["definitions"]}
    else:
        version = api_version.rsplit("/", 1)[-1]
        schema = next(v["schema"]["openAPIV3Schema"] for v in raw["spec"]["versions"] if v["name"] == version)
    for fix in source.fixes:
        fix(schema)
    strictify(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(doc: dict) -> list[str]:
    """Strict JSON Schema errors as `path: message`, sorted (stable for tests and CI logs)."""
    validator = strict_validator(str(doc.get("apiVersion")), str(doc.get("kind")))
    errors = []
    for err in validator.iter_errors(doc):
        path = "/".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{path}: {err.message}")
    return sorted(errors)


def manifest_errors(doc: dict) -> list[str]:
    """Schema errors plus the semantic checks for kinds that have them (Argo workflows)."""
    return schema_errors(doc) + semantic_errors(doc)


def check_documents(docs: Iterable[dict], where: str = "") -> list[str]:
    problems = []
    for i, doc in enumerate(docs):
        if not doc:
            continue
        name = f"{where}#{i} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
        problems += [f"{name}: {e}" for e in manifest_errors(doc)]
    return problems


def workflow_templates(docs: Iterable[dict]) -> dict[str, dict]:
    return {(d.get("metadata") or {}).get("name", ""): d for d in docs if d and d.get("kind") == "WorkflowTemplate"}


def check_file(path: Path) -> list[str]:
    """Check every document of a (multi-document) YAML file; references to WorkflowTemplates resolve against the
    file itself and the WorkflowTemplates beside it (the chart's files/workflows, all installed together)."""
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    library = sibling_templates(path) | workflow_templates(docs)
    return check_documents(docs, str(path)) + [f"{path}: {e}" for e in reference_errors(docs, library)]
