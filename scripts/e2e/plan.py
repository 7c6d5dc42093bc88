"""What the kind harness (scripts/e2e/run.sh) reads from the repository, so that nothing it installs, builds or
submits is a second, hand-typed copy of a fact another file owns:

  releases            the platform, in install order, from charts/platform/versions.yaml (the file terraform installs
                      GKE's platform from: one version of each component for both), the releases whose `targets`
                      include kind (absent: every target): one tab-separated line per release
                      `name namespace repository chart version values...` (repository `-` for an oci:// chart or a
                      chart in charts/platform/, whose path is then the chart); the values files are
                      charts/platform/values/<values> and, when it exists, the kind-only override
                      scripts/e2e/platform/<name>.yaml (applied last).
  tool NAME           the pinned version of a CLI (versions.yaml `tools`: kind, helm, kubectl, argo).
  images              every image the rendered Argo templates (charts/sentimentops/files/workflows/) and the chart
                      rendered with the kind values use, base first: `name dockerfile` per line, the Dockerfile taken
                      from .github/workflows/images.yml (what CI builds), so an image nobody builds is an error here.
  check-params T P... the WorkflowTemplate named T is rendered and declares every parameter P (what run.sh passes with
                      `argo submit --from workflowtemplate/T -p P=...`).
  canary-name         the predictor name the rollout gives a RawDeployment canary (steps/rollout/kserve.py
                      CANARY_NAME): KServe serves it as Service <isvc>-<name>-predictor, which the load reaches.

Offline: no cluster, no network (the chart is rendered with helm-python-sdk, Helm's Go SDK). Bad input is one line on
stderr and exit 2, never a traceback.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
VERSIONS = REPO / "charts" / "platform" / "versions.yaml"
PLATFORM_VALUES = REPO / "charts" / "platform" / "values"
KIND_OVERRIDES = REPO / "scripts" / "e2e" / "platform"
IMAGES_WORKFLOW = REPO / ".github" / "workflows" / "images.yml"
CHART = REPO / "charts" / "sentimentops"
RENDERED = CHART / "files" / "workflows"
VALUES_KIND = REPO / "scripts" / "e2e" / "values-kind.yaml"
RELEASE, NAMESPACE = "sentimentops", "sentimentops"
TOOLS = ("kind", "helm", "kubectl", "argo")
TARGET = "kind"
# `<registry>/sentimentops-<name>:<tag>`: the one image naming scheme (templates, chart, images.yml).
IMAGE = re.compile(r"/sentimentops-([a-z0-9][a-z0-9-]*):")
# The second install's values (run.sh step 6): the InferenceService on, serving a model. Rendering with them shows
# every image the chart can use (the ServingRuntime's serve image appears only with the InferenceService).
SERVING = {"inferenceService": {"enabled": True, "storageUri": "pvc://mlflow-artifacts/plan", "modelVersion": "1"}}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


class PlanError(Exception):
    """The repository does not hold what the harness needs: the message says what and where."""


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise PlanError(f"{_rel(path)} is missing") from err
    except yaml.YAMLError as err:
        raise PlanError(f"{_rel(path)} is not valid YAML: {err}") from err


def platform() -> dict:
    doc = _load(VERSIONS)
    if not isinstance(doc, dict) or not isinstance(doc.get("releases"), list) or not isinstance(doc.get("tools"), dict):
        raise PlanError(f"{_rel(VERSIONS)}: expected `releases: [...]` and `tools: {{...}}`")
    return doc


def releases() -> list[dict]:
    """The releases in install order, each checked, with the values files (platform's, then kind's) resolved."""
    out, names = [], []
    for i, rel in enumerate(platform()["releases"]):
        missing = [k for k in ("name", "namespace", "chart", "version") if not (rel or {}).get(k)]
        if missing or "repository" not in rel:
            raise PlanError(f"{_rel(VERSIONS)}: release #{i + 1} lacks "
                            f"{', '.join(missing + ([] if 'repository' in (rel or {}) else ['repository']))}")
        names.append(rel["name"])
        if TARGET not in rel.get("targets", [TARGET]):
            continue  # e.g. Istio and Knative: GKE's Serverless KServe; kind runs RawDeployment
        values = []
        if rel.get("values"):
            path = PLATFORM_VALUES / rel["values"]
            if not path.is_file():
                raise PlanError(f"{_rel(VERSIONS)}: release {rel['name']}: no values file "
                                f"{_rel(path)}")
            values.append(path)
        override = KIND_OVERRIDES / f"{rel['name']}.yaml"
        if override.is_file():
            values.append(override)
        out.append({**rel, "values_files": [p.relative_to(REPO).as_posix() for p in values]})
    strays = sorted(p.name for p in KIND_OVERRIDES.glob("*.yaml") if p.stem not in names)
    if strays:
        raise PlanError(f"scripts/e2e/platform/{strays[0]} overrides no release of {_rel(VERSIONS)} "
                        f"(releases: {', '.join(names)})")
    return out


def release_lines() -> list[str]:
    lines = []
    for rel in releases():
        repo, chart = str(rel["repository"] or ""), str(rel["chart"])
        if repo.startswith("oci://"):  # helm takes an OCI chart as one reference, without --repo
            repo, chart = "-", f"{repo.rstrip('/')}/{chart}"
        elif not repo:  # a chart of this repository: charts/platform/<chart>
            local = VERSIONS.parent / chart
            if not (local / "Chart.yaml").is_file():
                raise PlanError(f"{_rel(VERSIONS)}: release {rel['name']}: no chart {_rel(local)}")
            repo, chart = "-", local.relative_to(REPO).as_posix()
        lines.append("\t".join([rel["name"], rel["namespace"], repo, chart, str(rel["version"]),
                                *rel["values_files"]]))
    return lines


def tool(name: str) -> str:
    tools = platform()["tools"]
    if name not in tools or not tools[name]:
        raise PlanError(f"{_rel(VERSIONS)}: tools.{name} is not set (tools: {', '.join(tools)})")
    return str(tools[name])


def rendered_docs() -> list[dict]:
    docs = []
    for path in sorted(RENDERED.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not docs:
        raise PlanError(f"no rendered Argo documents in {_rel(RENDERED)} (run `sentimentops render`)")
    return docs


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def kind_values(extra: dict | None = None) -> dict:
    values = _load(VALUES_KIND) or {}
    return deep_merge(values, extra or {})


def render_chart(values: dict) -> list[dict]:
    """charts/sentimentops rendered as `helm upgrade --install sentimentops ... -n sentimentops` would (offline)."""
    try:
        import helm_python
    except ImportError as err:
        raise PlanError("helm-python-sdk is not installed (the infra extra; `make e2e` installs it)") from err
    try:
        out = helm_python.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm_python.HelmError as err:
        raise PlanError(f"charts/sentimentops does not render with the kind values: {err}") from err
    try:  # NOTES.txt is printed after an install, never applied (Helm leaves it out of the manifest too)
        return [d for path, text in out.items() if not path.endswith("NOTES.txt")
                for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as err:
        raise PlanError(f"charts/sentimentops renders invalid YAML with the kind values: {err}") from err


def used_images(docs: Iterable[dict]) -> set[str]:
    return set(IMAGE.findall(yaml.safe_dump_all(list(docs))))


def built_images() -> dict[str, str]:
    """name -> Dockerfile, as .github/workflows/images.yml builds them (base job + the stages matrix)."""
    doc = _load(IMAGES_WORKFLOW)
    try:
        base = next(s["with"]["file"] for s in doc["jobs"]["base"]["steps"] if "file" in (s.get("with") or {}))
        matrix = doc["jobs"]["stages"]["strategy"]["matrix"]["include"]
    except (KeyError, TypeError, StopIteration) as err:
        raise PlanError(f"{_rel(IMAGES_WORKFLOW)}: no base build step or stages matrix") from err
    return {"base": base, **{m["image"]: m["file"] for m in matrix}}


def image_lines() -> list[str]:
    used = used_images(rendered_docs()) | used_images(render_chart(kind_values(SERVING)))
    built = built_images()
    unbuilt = sorted(used - set(built))
    if unbuilt:
        raise PlanError(f"sentimentops-{unbuilt[0]} is used by the templates or the chart but "
                        f"{_rel(IMAGES_WORKFLOW)} builds no such image")
    return [f"base\t{built['base']}"] + [f"{name}\t{built[name]}" for name in sorted(used - {"base"})]


def template_parameters(name: str) -> list[str]:
    for doc in rendered_docs():
        if doc.get("kind") == "WorkflowTemplate" and doc["metadata"].get("name") == name:
            return [p["name"] for p in (doc["spec"].get("arguments") or {}).get("parameters") or []]
    found = sorted(d["metadata"]["name"] for d in rendered_docs() if d.get("kind") == "WorkflowTemplate")
    raise PlanError(f"no WorkflowTemplate {name!r} in {_rel(RENDERED)} (found: {', '.join(found)})")


def check_params(template: str, params: list[str]) -> None:
    declared = set(template_parameters(template))
    unknown = [p for p in params if p not in declared]
    if unknown:
        raise PlanError(f"WorkflowTemplate {template} declares no parameter {unknown[0]!r} "
                        f"(declared: {', '.join(sorted(declared))})")


def canary_name() -> str:
    try:
        from sentimentops.steps.rollout.kserve import CANARY_NAME
    except ImportError as err:
        raise PlanError("steps/rollout/kserve.py names no RawDeployment canary (CANARY_NAME): KServe 0.20 requires "
                        "spec.canary[].predictor.name and serves the canary as Service <isvc>-<name>-predictor, "
                        f"which the kind load must reach ({err})") from err
    return str(CANARY_NAME)


USAGE = "usage: plan.py releases | tool NAME | images | check-params TEMPLATE PARAM... | canary-name"


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["releases"]:
                print("\n".join(release_lines()))
            case ["tool", name] if name in TOOLS:
                print(tool(name))
            case ["images"]:
                print("\n".join(image_lines()))
            case ["check-params", template, *params]:
                check_params(template, params)
            case ["canary-name"]:
                print(canary_name())
            case _:
                print(USAGE, file=sys.stderr)
                return 2
    except PlanError as err:
        print(f"e2e plan: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
