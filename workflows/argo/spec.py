"""Typed view of a rendered Argo Workflow/WorkflowTemplate, as much of it as the local runner executes.

The runner reads the committed YAML, never the Hera objects, so what runs locally is what Argo would run.
Fields that change control flow but are not implemented here (loops, continueOn, templateRef, hooks, ...)
raise SpecError naming the task, instead of being silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sentimentops.workflows.argo.expressions import DEPENDS_IDENTIFIER, evaluate_node, parse

_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_UNSUPPORTED_TASK_FIELDS = ("withItems", "withParam", "withSequence", "continueOn", "templateRef", "hooks",
                            "onExit", "inline")


class SpecError(ValueError):
    """The spec uses something the local runner cannot execute faithfully, or is inconsistent."""


@dataclass(frozen=True)
class ContainerTemplate:
    name: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    input_parameters: Mapping[str, str | None]  # name -> default (None: must be supplied)
    input_artifacts: Mapping[str, str]  # name -> container path
    output_artifacts: Mapping[str, str]  # name -> container path
    output_parameters: Mapping[str, tuple[str, str | None]]  # name -> (valueFrom.path, valueFrom.default)


@dataclass(frozen=True)
class DagTask:
    name: str
    template: str
    depends: str  # normalised: a `dependencies` list becomes "a && b"; "" = no dependency
    when: str | None
    parameters: Mapping[str, str]  # argument name -> value (may hold {{...}})
    artifacts: Mapping[str, str]  # argument name -> `from` reference


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    parameters: Mapping[str, str]  # workflow parameter -> default value
    enums: Mapping[str, tuple[str, ...]]
    tasks: tuple[DagTask, ...]  # declaration order
    templates: Mapping[str, ContainerTemplate]
    fail_fast: bool = True
    source: Path | None = field(default=None, compare=False)


def substitute(text: str, values: Mapping[str, str], where: str) -> str:
    """Replace every `{{var}}`; an unknown variable is an error (Argo would fail the node as well)."""

    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key.startswith("="):
            raise SpecError(f"{where}: expression templates {{{{={key[1:]}}}}} are not supported locally")
        if key not in values:
            known = ", ".join(sorted(values)) or "none"
            raise SpecError(f"{where}: unknown variable {{{{{key}}}}} (known here: {known})")
        return values[key]

    return _VARIABLE.sub(repl, text)


def _container(t: dict) -> ContainerTemplate:
    c = t["container"]
    if not c.get("command"):
        raise SpecError(f"template {t['name']}: no `command` (the image entrypoint is unknown locally)")
    inputs, outputs = t.get("inputs") or {}, t.get("outputs") or {}
    return ContainerTemplate(
        name=t["name"],
        command=tuple(c["command"]),
        args=tuple(c.get("args") or ()),
        env=tuple((e["name"], e.get("value", "")) for e in c.get("env") or ()),
        input_parameters={p["name"]: p.get("value", p.get("default")) for p in inputs.get("parameters") or ()},
        input_artifacts={a["name"]: a["path"] for a in inputs.get("artifacts") or ()},
        output_artifacts={a["name"]: a["path"] for a in outputs.get("artifacts") or ()},
        output_parameters={
            p["name"]: (p["valueFrom"]["path"], p["valueFrom"].get("default"))
            for p in outputs.get("parameters") or ()
        },
    )


def _task(t: dict) -> DagTask:
    bad = [f for f in _UNSUPPORTED_TASK_FIELDS if f in t]
    if bad:
        raise SpecError(f"task {t['name']}: {', '.join(bad)} not supported by the local runner")
    if "depends" in t and "dependencies" in t:
        raise SpecError(f"task {t['name']}: set either depends or dependencies, not both (Argo rejects it too)")
    args = t.get("arguments") or {}
    artifacts = {}
    for a in args.get("artifacts") or ():
        if "from" not in a:
            raise SpecError(f"task {t['name']}: artifact argument {a['name']} needs `from` locally")
        artifacts[a["name"]] = a["from"]
    return DagTask(
        name=t["name"],
        template=t["template"],
        depends=t.get("depends") or " && ".join(t.get("dependencies") or ()),
        when=t.get("when"),
        parameters={p["name"]: str(p.get("value", "")) for p in args.get("parameters") or ()},
        artifacts=artifacts,
    )


def parse_spec(doc: dict, source: Path | None = None) -> WorkflowSpec:
    kind = doc.get("kind")
    if kind not in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate"):
        raise SpecError(f"expected a Workflow or WorkflowTemplate, got kind {kind!r}")
    spec = doc["spec"]
    by_name = {t["name"]: t for t in spec.get("templates") or ()}
    entry = by_name.get(spec.get("entrypoint", ""))
    if entry is None or "dag" not in entry:
        raise SpecError(f"entrypoint {spec.get('entrypoint')!r} must name a DAG template")
    tasks = tuple(_task(t) for t in entry["dag"]["tasks"])
    templates: dict[str, ContainerTemplate] = {}
    for task in tasks:
        t = by_name.get(task.template)
        if t is None:
            raise SpecError(f"task {task.name}: template {task.template!r} does not exist")
        if "container" not in t:
            raise SpecError(f"task {task.name}: template {task.template} is not a container template")
        templates[task.template] = _container(t)
    params = (spec.get("arguments") or {}).get("parameters") or ()
    meta = doc.get("metadata") or {}
    return WorkflowSpec(
        name=meta.get("name") or meta.get("generateName", "workflow").rstrip("-"),
        parameters={p["name"]: str(p.get("value", p.get("default", ""))) for p in params},
        enums={p["name"]: tuple(p["enum"]) for p in params if p.get("enum")},
        tasks=tasks,
        templates=templates,
        fail_fast=entry["dag"].get("failFast", True),
        source=source,
    )


def load_spec(path: Path) -> WorkflowSpec:
    with open(path) as fh:
        return parse_spec(yaml.safe_load(fh), source=path)


def depends_on(task: DagTask) -> list[str]:
    """Task names a `depends` expression mentions (`a.Succeeded || b` -> [a, b])."""
    if not task.depends:
        return []
    out: list[str] = []

    def collect(name: str) -> bool:
        out.append(_split_result(name)[0])
        return True

    evaluate_node(parse(task.depends, DEPENDS_IDENTIFIER), collect)
    return list(dict.fromkeys(out))


_RESULTS = {"Succeeded", "Failed", "Errored", "Skipped", "Omitted", "Daemoned", "AnySucceeded", "AllFailed"}


def _split_result(name: str) -> tuple[str, str | None]:
    task, _, result = name.rpartition(".")
    return (task, result) if task and result in _RESULTS else (name, None)


def depends_satisfied(task: DagTask, phases: Mapping[str, str]) -> bool:
    """Argo semantics: a bare `a` means a.Succeeded || a.Skipped || a.Daemoned; `Reused` counts as Succeeded."""
    if not task.depends:
        return True

    def resolve(name: str) -> bool:
        dep, result = _split_result(name)
        phase = "Succeeded" if phases[dep] == "Reused" else phases[dep]
        if result is None:
            return phase in ("Succeeded", "Skipped", "Daemoned")
        if result == "AnySucceeded":
            return phase == "Succeeded"
        if result == "AllFailed":
            return phase == "Failed"
        return phase == result

    return bool(evaluate_node(parse(task.depends, DEPENDS_IDENTIFIER), resolve))


def topological_order(spec: WorkflowSpec) -> list[DagTask]:
    """Kahn's algorithm, ties broken by declaration order so a run is reproducible."""
    known = {t.name for t in spec.tasks}
    deps = {t.name: depends_on(t) for t in spec.tasks}
    for name, ds in deps.items():
        missing = [d for d in ds if d not in known]
        if missing:
            raise SpecError(f"task {name}: depends on unknown task(s) {', '.join(missing)}")
    done: list[DagTask] = []
    remaining = list(spec.tasks)
    while remaining:
        ready = next((t for t in remaining if all(d in {x.name for x in done} for d in deps[t.name])), None)
        if ready is None:
            raise SpecError(f"dependency cycle among tasks {', '.join(t.name for t in remaining)}")
        done.append(ready)
        remaining.remove(ready)
    return done
