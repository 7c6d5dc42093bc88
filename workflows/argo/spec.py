"""Typed view of a rendered Argo Workflow/WorkflowTemplate, as much of it as the local runner executes.

The runner reads the committed YAML, never the Hera objects, so what runs locally is what Argo would run.
Supported: container and DAG templates, `templateRef` to a WorkflowTemplate rendered in the same folder (resolved
by metadata.name, the way Argo resolves it in the namespace; the referenced template's own templates are its
scope), nested DAGs, `when`, `depends`/`dependencies`, `onExit` (a container template), and the fan-out loops
`withParam` (a JSON list, usually another task's output parameter) and `withItems` (a literal list): one run of
the task per item, with `{{item}}` and `{{item.KEY}}` substituted (items_of, item_values).
Fields that change control flow but are not implemented here (withSequence, continueOn, hooks, ...) raise SpecError
naming the task, instead of being silently ignored.

Longer than 350 lines: the typed model, its parser (templateRef scopes included) and the DAG semantics (`depends`,
order) are one vocabulary the runner and the checks share; apart, the parser and the ordering would import each
other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sentimentops.workflows.argo.expressions import DEPENDS_IDENTIFIER, evaluate_node, parse

_VARIABLE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_UNSUPPORTED_TASK_FIELDS = ("withSequence", "continueOn", "hooks", "onExit", "inline")
_WORKFLOW_KINDS = ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate")
MAX_NESTING = 8  # DAGs calling DAGs: deeper than this is a templateRef cycle, not a design


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
class TemplateRef:
    name: str  # a WorkflowTemplate's metadata.name
    template: str  # a template inside it


@dataclass(frozen=True)
class DagTask:
    name: str
    template: str | None  # a template of the same document, or None with template_ref
    depends: str  # normalised: a `dependencies` list becomes "a && b"; "" = no dependency
    when: str | None
    parameters: Mapping[str, str]  # argument name -> value (may hold {{...}})
    artifacts: Mapping[str, str]  # argument name -> `from` reference
    template_ref: TemplateRef | None = None
    with_param: str | None = None  # `withParam`: an expression that yields a JSON list
    with_items: tuple | None = None  # `withItems`: the literal list

    @property
    def fans_out(self) -> bool:
        return self.with_param is not None or self.with_items is not None


@dataclass(frozen=True)
class DagTemplate:
    name: str
    tasks: tuple[DagTask, ...]  # declaration order
    input_parameters: Mapping[str, str | None]  # name -> default (None: must be supplied)
    fail_fast: bool = True


Template = ContainerTemplate | DagTemplate


@dataclass(frozen=True)
class Scope:
    """One WorkflowTemplate's templates: where a task's `template` is looked up (Argo's template scope)."""

    name: str
    templates: Mapping[str, Template]


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    parameters: Mapping[str, str]  # workflow parameter -> default value
    enums: Mapping[str, tuple[str, ...]]
    entrypoint: DagTemplate
    scope: Scope  # this document's templates (reachable ones parsed)
    library: Mapping[str, Scope]  # WorkflowTemplates a templateRef may name, by metadata.name
    on_exit: ContainerTemplate | None = None
    source: Path | None = field(default=None, compare=False)

    @property
    def tasks(self) -> tuple[DagTask, ...]:
        return self.entrypoint.tasks

    @property
    def templates(self) -> Mapping[str, Template]:
        return self.scope.templates

    @property
    def fail_fast(self) -> bool:
        return self.entrypoint.fail_fast

    def resolve(self, task: DagTask, scope: Scope) -> tuple[Template, Scope]:
        """The template a task runs and the scope its own tasks resolve in (a templateRef moves into the
        referenced WorkflowTemplate, as in Argo)."""
        if task.template_ref is not None:
            ref = task.template_ref
            target = self.library.get(ref.name)
            if target is None:
                raise SpecError(f"task {task.name}: templateRef {ref.name!r} is not a WorkflowTemplate beside the "
                                f"spec (known: {', '.join(sorted(self.library)) or 'none'})")
            scope = target
            name = ref.template
        else:
            name = task.template or ""
        template = scope.templates.get(name)
        if template is None:
            raise SpecError(f"task {task.name}: template {name!r} does not exist in {scope.name}")
        return template, scope

    def task_paths(self) -> list[str]:
        """Every task the run may execute, nested ones as `parent/child` (what --stop-after accepts)."""
        paths: list[str] = []

        def walk(dag: DagTemplate, scope: Scope, prefix: str) -> None:
            for task in dag.tasks:
                paths.append(prefix + task.name)
                template, inner = self.resolve(task, scope)
                if isinstance(template, DagTemplate):
                    walk(template, inner, f"{prefix}{task.name}/")

        walk(self.entrypoint, self.scope, "")
        return paths


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


def items_of(task: DagTask, values: Mapping[str, str], where: str) -> list:
    """A fan-out's items: withItems as written, or withParam substituted and read as a JSON list (Argo fails the
    node when the value is not one)."""
    if task.with_items is not None:
        return list(task.with_items)
    text = substitute(task.with_param or "", values, f"{where} withParam")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{where}: withParam value is not a JSON list: {text[:200]!r} ({exc})") from exc
    if not isinstance(items, list):
        raise SpecError(f"{where}: withParam value is not a JSON list: {text[:200]!r}")
    return items


def item_text(value: object) -> str:
    """How Argo writes an item into a string: a string as it is, anything else as compact JSON (a map with its
    keys sorted, as Go's encoding/json writes a map)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def item_values(item: object) -> dict[str, str]:
    """`{{item}}`, and `{{item.KEY}}` for each key of a map item."""
    values = {"item": item_text(item)}
    if isinstance(item, dict):
        values |= {f"item.{k}": item_text(v) for k, v in item.items()}
    return values


def _env_value(t: dict, e: dict) -> str | None:
    if "value" in e or "valueFrom" not in e:
        return str(e.get("value", ""))
    ref = e["valueFrom"].get("secretKeyRef") or {}
    if ref.get("optional"):
        # An optional Secret key the cluster provides (a Slack webhook): locally the variable is not set by the
        # template, so a value from the runner's own environment or --env reaches the step as usual.
        return None
    raise SpecError(f"template {t['name']}: env {e['name']} comes from {e['valueFrom']}, which only the cluster has")


def _container(t: dict) -> ContainerTemplate:
    c = t["container"]
    if not c.get("command"):
        raise SpecError(f"template {t['name']}: no `command` (the image entrypoint is unknown locally)")
    inputs, outputs = t.get("inputs") or {}, t.get("outputs") or {}
    return ContainerTemplate(
        name=t["name"],
        command=tuple(c["command"]),
        args=tuple(c.get("args") or ()),
        env=tuple((e["name"], value) for e in c.get("env") or () if (value := _env_value(t, e)) is not None),
        input_parameters=_input_parameters(inputs),
        input_artifacts={a["name"]: a["path"] for a in inputs.get("artifacts") or ()},
        output_artifacts={a["name"]: a["path"] for a in outputs.get("artifacts") or ()},
        output_parameters={
            p["name"]: (p["valueFrom"]["path"], p["valueFrom"].get("default"))
            for p in outputs.get("parameters") or ()
        },
    )


def _input_parameters(inputs: dict) -> dict[str, str | None]:
    return {p["name"]: p.get("value", p.get("default")) for p in inputs.get("parameters") or ()}


def _task(t: dict) -> DagTask:
    bad = [f for f in _UNSUPPORTED_TASK_FIELDS if f in t]
    if bad:
        raise SpecError(f"task {t['name']}: {', '.join(bad)} not supported by the local runner")
    if "depends" in t and "dependencies" in t:
        raise SpecError(f"task {t['name']}: set either depends or dependencies, not both (Argo rejects it too)")
    if ("template" in t) == ("templateRef" in t):
        raise SpecError(f"task {t['name']}: set exactly one of template and templateRef")
    ref = t.get("templateRef")
    if ref is not None and (ref.get("clusterScope") or not ref.get("name") or not ref.get("template")):
        raise SpecError(f"task {t['name']}: templateRef needs name and template (clusterScope is not supported)")
    if "withParam" in t and "withItems" in t:
        raise SpecError(f"task {t['name']}: set either withParam or withItems, not both")
    if "withItems" in t and not isinstance(t["withItems"], list):
        raise SpecError(f"task {t['name']}: withItems must be a list")
    args = t.get("arguments") or {}
    artifacts = {}
    for a in args.get("artifacts") or ():
        if "from" not in a:
            raise SpecError(f"task {t['name']}: artifact argument {a['name']} needs `from` locally")
        artifacts[a["name"]] = a["from"]
    return DagTask(
        name=t["name"],
        template=t.get("template"),
        depends=t.get("depends") or " && ".join(t.get("dependencies") or ()),
        when=t.get("when"),
        parameters={p["name"]: str(p.get("value", "")) for p in args.get("parameters") or ()},
        artifacts=artifacts,
        template_ref=TemplateRef(ref["name"], ref["template"]) if ref is not None else None,
        with_param=str(t["withParam"]) if "withParam" in t else None,
        with_items=tuple(t["withItems"]) if "withItems" in t else None,
    )


def _template(t: dict) -> Template:
    if "container" in t:
        return _container(t)
    if "dag" in t:
        if (t.get("outputs") or {}).get("parameters") or (t.get("outputs") or {}).get("artifacts"):
            raise SpecError(f"template {t['name']}: DAG outputs are not supported by the local runner")
        return DagTemplate(name=t["name"], tasks=tuple(_task(x) for x in t["dag"].get("tasks") or ()),
                           input_parameters=_input_parameters(t.get("inputs") or {}),
                           fail_fast=t["dag"].get("failFast", True))
    kind = next((k for k in t if k not in ("name", "inputs", "outputs", "metadata")), "?")
    raise SpecError(f"template {t['name']}: a {kind} template cannot run locally (container and dag only)")


class _Scopes:
    """Parses each document's templates on first use: only what the run can reach must be executable."""

    def __init__(self, docs: Mapping[str, dict]) -> None:
        self.raw = {name: {t["name"]: t for t in (doc.get("spec") or {}).get("templates") or ()}
                    for name, doc in docs.items()}
        self.parsed: dict[str, dict[str, Template]] = {name: {} for name in docs}

    def get(self, scope: str, template: str, where: str) -> Template:
        if scope not in self.raw:
            raise SpecError(f"{where}: templateRef {scope!r} is not a WorkflowTemplate beside the spec "
                            f"(known: {', '.join(sorted(self.raw)) or 'none'})")
        if template not in self.parsed[scope]:
            raw = self.raw[scope].get(template)
            if raw is None:
                raise SpecError(f"{where}: template {template!r} does not exist in {scope}")
            self.parsed[scope][template] = _template(raw)
        return self.parsed[scope][template]

    def walk(self, dag: DagTemplate, scope: str, depth: int = 0) -> None:
        if depth > MAX_NESTING:
            raise SpecError(f"template {dag.name}: DAGs nested deeper than {MAX_NESTING} (a templateRef cycle?)")
        for task in dag.tasks:
            target = task.template_ref.name if task.template_ref else scope
            name = task.template_ref.template if task.template_ref else task.template or ""
            template = self.get(target, name, f"task {task.name}")
            if isinstance(template, DagTemplate):
                self.walk(template, target, depth + 1)

    def scopes(self) -> dict[str, Scope]:
        return {name: Scope(name, dict(templates)) for name, templates in self.parsed.items()}


def sibling_templates(source: Path | None) -> dict[str, dict]:
    """The WorkflowTemplates rendered beside `source` (the chart's files/workflows), by metadata.name."""
    if source is None:
        return {}
    docs: dict[str, dict] = {}
    for path in sorted(Path(source).resolve().parent.glob("*.y*ml")):
        try:
            with open(path) as fh:
                loaded = list(yaml.safe_load_all(fh))
        except (OSError, yaml.YAMLError):
            continue  # not ours to judge: only a templateRef to it would fail, with a clear message
        for doc in loaded:
            if isinstance(doc, dict) and doc.get("kind") == "WorkflowTemplate":
                docs.setdefault((doc.get("metadata") or {}).get("name", ""), doc)
    return docs


def parse_spec(doc: dict, source: Path | None = None, library: Mapping[str, dict] | None = None) -> WorkflowSpec:
    """`library`: WorkflowTemplates a templateRef may name (default: those rendered beside `source`)."""
    kind = doc.get("kind")
    if kind not in _WORKFLOW_KINDS:
        raise SpecError(f"expected a Workflow or WorkflowTemplate, got kind {kind!r}")
    spec = doc["spec"]
    meta = doc.get("metadata") or {}
    own = meta.get("name") or "(this workflow)"
    docs = dict(sibling_templates(source) if library is None else library)
    docs[own] = doc  # the document itself wins over a stale copy of the same name
    scopes = _Scopes(docs)
    entry = scopes.get(own, spec.get("entrypoint", ""), "entrypoint")
    if not isinstance(entry, DagTemplate):
        raise SpecError(f"entrypoint {spec.get('entrypoint')!r} must name a DAG template")
    scopes.walk(entry, own)
    on_exit = None
    if spec.get("onExit"):
        on_exit = scopes.get(own, spec["onExit"], "onExit")
        if not isinstance(on_exit, ContainerTemplate):
            raise SpecError(f"onExit {spec['onExit']!r}: only a container template can be an exit handler locally")
    params = (spec.get("arguments") or {}).get("parameters") or ()
    parsed = scopes.scopes()
    return WorkflowSpec(
        name=meta.get("name") or meta.get("generateName", "workflow").rstrip("-"),
        parameters={p["name"]: str(p.get("value", p.get("default", ""))) for p in params},
        enums={p["name"]: tuple(p["enum"]) for p in params if p.get("enum")},
        entrypoint=entry,
        scope=parsed[own],
        library=parsed,
        on_exit=on_exit,
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
    """Argo semantics: a bare `a` means a.Succeeded || a.Skipped || a.Daemoned; `Reused` counts as Succeeded, and
    the node phase Error is the result `Errored`."""
    if not task.depends:
        return True

    def resolve(name: str) -> bool:
        dep, result = _split_result(name)
        phase = {"Reused": "Succeeded", "Error": "Errored"}.get(phases[dep], phases[dep])
        if result is None:
            return phase in ("Succeeded", "Skipped", "Daemoned")
        if result == "AnySucceeded":
            return phase == "Succeeded"
        if result == "AllFailed":
            return phase == "Failed"
        return phase == result

    return bool(evaluate_node(parse(task.depends, DEPENDS_IDENTIFIER), resolve))


def topological_order(dag: WorkflowSpec | DagTemplate | Sequence[DagTask]) -> list[DagTask]:
    """Kahn's algorithm over one DAG's tasks, ties broken by declaration order so a run is reproducible."""
    tasks = tuple(dag.tasks if isinstance(dag, WorkflowSpec | DagTemplate) else dag)
    known = {t.name for t in tasks}
    deps = {t.name: depends_on(t) for t in tasks}
    for name, ds in deps.items():
        missing = [d for d in ds if d not in known]
        if missing:
            raise SpecError(f"task {name}: depends on unknown task(s) {', '.join(missing)}")
    done: list[DagTask] = []
    remaining = list(tasks)
    while remaining:
        ready = next((t for t in remaining if all(d in {x.name for x in done} for d in deps[t.name])), None)
        if ready is None:
            raise SpecError(f"dependency cycle among tasks {', '.join(t.name for t in remaining)}")
        done.append(ready)
        remaining.remove(ready)
    return done
