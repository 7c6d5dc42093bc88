"""Checks on Argo workflow specs that JSON Schema cannot express.

Each one is a mistake that passes the schema and only fails in the cluster, often hours into a run:
a task naming a missing template, a `{{tasks.X.outputs...}}` reference to a task that is not an ancestor
(Argo cannot resolve it) or to an output X does not declare, a cycle, an input parameter nobody supplies,
a leaf template without an explicit retryStrategy, `{{item}}` outside a withParam/withItems loop, a withParam
that is not one expression, a submission parameter without a description (the Argo UI
form would show a bare name), a `when` outside the govaluate subset; and across documents (`reference_errors`), a
templateRef or workflowTemplateRef naming a WorkflowTemplate or template nobody renders, an input a templateRef
call leaves out, a parameter a CronWorkflow or Sensor passes that the template does not declare.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentimentops.workflows.argo.expressions import DEPENDS_IDENTIFIER, ExpressionError, names, parse

_VAR = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_LEAF_KINDS = ("container", "script", "resource", "containerSet", "http", "plugin", "data")
_RESULT_SUFFIX = re.compile(
    r"\.(Succeeded|Failed|Errored|Skipped|Omitted|Daemoned|AnySucceeded|AllFailed)$")


def semantic_errors(doc: dict) -> list[str]:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate"):
        return check_workflow_spec(spec, "spec")
    if kind == "CronWorkflow":
        return check_workflow_spec(spec.get("workflowSpec") or {}, "spec.workflowSpec")
    return []


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _names(items: list | None) -> list[str]:
    return [i.get("name", "") for i in items or ()]


def _outputs(template: dict) -> set[str]:
    """What `{{tasks.X.outputs.<...>}}` may name for a task running this template."""
    outs = template.get("outputs") or {}
    declared = {f"parameters.{n}" for n in _names(outs.get("parameters"))}
    declared |= {f"artifacts.{n}" for n in _names(outs.get("artifacts"))}
    if any(k in template for k in ("container", "script", "containerSet")):
        declared |= {"result", "exitCode"}
    return declared


def check_workflow_spec(spec: dict, where: str) -> list[str]:
    errors: list[str] = []
    templates = {t.get("name"): t for t in spec.get("templates") or ()}
    if len(templates) != len(spec.get("templates") or ()):
        errors.append(f"{where}.templates: duplicate template names")
    params = (spec.get("arguments") or {}).get("parameters") or ()
    global_params = set(_names(params))
    if templates:  # the definition itself (not a CronWorkflow that only references a template)
        if spec.get("entrypoint") not in templates:
            errors.append(f"{where}.entrypoint: {spec.get('entrypoint')!r} is not a template")
        for p in params:
            if not (p.get("description") or "").strip():
                errors.append(f"{where}.arguments.parameters.{p.get('name')}: no description (the UI form shows it)")
    for name, t in templates.items():
        errors += _check_template(t, f"{where}.templates.{name}", global_params)
        if "dag" in t:
            errors += _check_dag(t, templates, f"{where}.templates.{name}.dag", global_params)
    return errors


def _check_template(t: dict, where: str, global_params: set[str]) -> list[str]:
    errors = []
    if any(k in t for k in _LEAF_KINDS):
        retry = t.get("retryStrategy")
        if not retry or "limit" not in retry:
            errors.append(f"{where}: no retryStrategy with a limit (declare retries explicitly, even 0)")
    inputs, outputs = t.get("inputs") or {}, t.get("outputs") or {}
    declared = {f"inputs.parameters.{n}" for n in _names(inputs.get("parameters"))}
    declared |= {f"inputs.artifacts.{n}" for n in _names(inputs.get("artifacts"))}
    declared |= {f"outputs.parameters.{n}" for n in _names(outputs.get("parameters"))}
    declared |= {f"outputs.artifacts.{n}" for n in _names(outputs.get("artifacts"))}
    body = {k: v for k, v in t.items() if k not in ("dag", "steps")}  # task fields are checked per task
    for text in _strings(body):
        for var in _VAR.findall(text):
            errors += _check_variable(var, declared, global_params, where)
    return errors


def _check_variable(var: str, declared: set[str], global_params: set[str], where: str) -> list[str]:
    parts = var.split(".")
    if parts[:2] == ["workflow", "parameters"] and ".".join(parts[2:]) not in global_params:
        return [f"{where}: {{{{{var}}}}} names no workflow parameter"]
    if parts[0] in ("inputs", "outputs") and len(parts) >= 3:
        key = ".".join(parts[:3])
        if parts[1] in ("parameters", "artifacts") and key not in declared:
            return [f"{where}: {{{{{var}}}}} is not declared in the template's {parts[0]}"]
    return []


def _dependencies(task: dict, where: str) -> tuple[list[str], list[str]]:
    if "depends" in task and "dependencies" in task:
        return [], [f"{where}: set depends or dependencies, not both"]
    if "depends" not in task:
        return list(task.get("dependencies") or ()), []
    try:
        found = names(parse(task["depends"], DEPENDS_IDENTIFIER))
    except ExpressionError as exc:
        return [], [f"{where}.depends: {exc}"]
    return [_RESULT_SUFFIX.sub("", n) for n in found], []


def _check_dag(dag_t: dict, templates: dict, where: str, global_params: set[str]) -> list[str]:
    errors: list[str] = []
    tasks = {t.get("name"): t for t in dag_t["dag"].get("tasks") or ()}
    deps: dict[str, list[str]] = {}
    for name, task in tasks.items():
        tw = f"{where}.tasks.{name}"
        deps[name], errs = _dependencies(task, tw)
        errors += errs
        errors += [f"{tw}: depends on unknown task {d!r}" for d in deps[name] if d not in tasks]
        if "template" in task and task["template"] not in templates:
            errors.append(f"{tw}: template {task['template']!r} does not exist")
    ancestors = _ancestors(deps, errors, where)
    dag_inputs = {f"inputs.parameters.{n}" for n in _names((dag_t.get("inputs") or {}).get("parameters"))}
    for name, task in tasks.items():
        tw = f"{where}.tasks.{name}"
        loop = "withParam" in task or "withItems" in task
        for text in _strings({k: task.get(k) for k in ("arguments", "when", "withParam")}):
            for var in _VAR.findall(text):
                errors += _check_task_reference(var, name, tasks, templates, ancestors.get(name, set()), tw)
                errors += _check_variable(var, dag_inputs, global_params, tw)
                if not loop and var.split(".")[0] == "item":
                    errors.append(f"{tw}: {{{{{var}}}}} outside a loop (the task has no withParam or withItems)")
        errors += _check_loop(task, tw)
        if task.get("when"):
            try:  # variables become a placeholder word, as Argo substitutes them before evaluating
                parse(_VAR.sub("placeholder", task["when"]))
            except ExpressionError as exc:
                errors.append(f"{tw}.when: {exc}")
        target = templates.get(task.get("template"))
        if target is not None:
            errors += _check_arguments(task, target, tw)
    return errors


def _check_loop(task: dict, where: str) -> list[str]:
    """withParam must be one `{{...}}` expression (Argo reads its value as a JSON list), withItems a list; a task
    with both is rejected by Argo."""
    if "withParam" in task and "withItems" in task:
        return [f"{where}: set withParam or withItems, not both"]
    if "withItems" in task and not isinstance(task["withItems"], list):
        return [f"{where}.withItems: must be a list"]
    if "withParam" in task and not re.fullmatch(r"\s*\{\{[^{}]+\}\}\s*", str(task["withParam"])):
        got = task["withParam"]
        return [f"{where}.withParam: must be one {{{{...}}}} expression that yields a JSON list, got {got!r}"]
    return []


def _ancestors(deps: dict[str, list[str]], errors: list[str], where: str) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}

    def visit(name: str, path: tuple[str, ...]) -> set[str]:
        if name in path:
            errors.append(f"{where}: dependency cycle {' -> '.join((*path, name))}")
            return set()
        if name not in result:
            found: set[str] = set()
            for d in deps.get(name, []):
                if d in deps:
                    found |= {d} | visit(d, (*path, name))
            result[name] = found
        return result[name]

    for name in deps:
        visit(name, ())
    return result


def _check_task_reference(var: str, task: str, tasks: dict, templates: dict, ancestors: set[str],
                          where: str) -> list[str]:
    parts = var.split(".")
    if parts[0] != "tasks" or len(parts) < 3:
        return []
    other = parts[1]
    if other not in tasks:
        return [f"{where}: {{{{{var}}}}} names unknown task {other!r}"]
    if other not in ancestors:
        return [f"{where}: {{{{{var}}}}} reads task {other!r}, which is not an ancestor of {task!r}"]
    if parts[2] == "outputs" and len(parts) > 3:
        template = templates.get(tasks[other].get("template"), {})
        out = ".".join(parts[3:5]) if parts[3] in ("parameters", "artifacts") else parts[3]
        if template and out not in _outputs(template):
            return [f"{where}: {{{{{var}}}}}: task {other!r} declares no output {out!r}"]
    return []


def _check_arguments(task: dict, template: dict, where: str) -> list[str]:
    errors = []
    args = task.get("arguments") or {}
    inputs = template.get("inputs") or {}
    for kind in ("parameters", "artifacts"):
        given = set(_names(args.get(kind)))
        wanted = {i["name"]: i for i in inputs.get(kind) or ()}
        errors += [f"{where}: argument {kind}.{n} is not an input of template {template['name']!r}"
                   for n in sorted(given - set(wanted))]
        for n, spec in wanted.items():
            has_default = any(k in spec for k in ("value", "default", "valueFrom", "optional", "raw", "gcs", "s3",
                                                   "http", "git"))
            if n not in given and not has_default:
                errors.append(f"{where}: input {kind}.{n} of template {template['name']!r} is not supplied")
    return errors


# ---- references between documents (what a single document's check cannot see) ----------------------------------

def _workflow_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every workflow spec a document carries: its own, a CronWorkflow's, a Sensor trigger's inline Workflow."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind in ("Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate"):
        yield "spec", spec
    elif kind == "CronWorkflow":
        yield "spec.workflowSpec", spec.get("workflowSpec") or {}
    elif kind == "Sensor":
        for i, trigger in enumerate(spec.get("triggers") or ()):
            resource = (((trigger.get("template") or {}).get("argoWorkflow") or {}).get("source") or {}).get("resource")
            if isinstance(resource, dict) and resource.get("kind") == "Workflow":
                yield f"spec.triggers.{i}.template.argoWorkflow.source.resource.spec", resource.get("spec") or {}


def reference_errors(docs: list[dict], library: dict[str, dict]) -> list[str]:
    """A `templateRef` or `workflowTemplateRef` must name a WorkflowTemplate in `library` (by metadata.name: what
    Argo looks up in the namespace), the referenced template must exist and get every input it needs, and a
    submission may only pass parameters the template declares (Argo rejects an undeclared one only at submit)."""
    errors: list[str] = []
    for doc in docs:
        name = (doc.get("metadata") or {}).get("name") or (doc.get("metadata") or {}).get("generateName", "?")
        for where, spec in _workflow_specs(doc):
            where = f"{doc.get('kind')}/{name} {where}"
            ref = (spec.get("workflowTemplateRef") or {}).get("name")
            if ref is not None:
                target = library.get(ref)
                if target is None:
                    errors.append(f"{where}.workflowTemplateRef: no WorkflowTemplate {ref!r}")
                else:
                    declared = set(_names(((target.get("spec") or {}).get("arguments") or {}).get("parameters")))
                    passed = _names((spec.get("arguments") or {}).get("parameters"))
                    errors += [f"{where}.arguments.parameters.{p}: not a parameter of WorkflowTemplate {ref!r}"
                               for p in passed if p not in declared]
            for t in spec.get("templates") or ():
                for task in (t.get("dag") or {}).get("tasks") or ():
                    if "templateRef" in task:
                        errors += _check_template_ref(task, library, f"{where}.templates.{t.get('name')}.dag.tasks."
                                                      f"{task.get('name')}")
    return errors


def _check_template_ref(task: dict, library: dict[str, dict], where: str) -> list[str]:
    ref = task["templateRef"]
    if ref.get("clusterScope"):
        return [f"{where}.templateRef: clusterScope templates are not part of this project"]
    target = library.get(ref.get("name"))
    if target is None:
        return [f"{where}.templateRef: no WorkflowTemplate {ref.get('name')!r}"]
    templates = {t.get("name"): t for t in (target.get("spec") or {}).get("templates") or ()}
    template = templates.get(ref.get("template"))
    if template is None:
        return [f"{where}.templateRef: WorkflowTemplate {ref.get('name')!r} has no template {ref.get('template')!r}"]
    return _check_arguments(task, template, where)
