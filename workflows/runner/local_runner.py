"""Execute a rendered Argo DAG on this machine: the same YAML the cluster runs, one subprocess per task.

Run folder layout (RUN = --run-dir; TASK is a task's path: `train`, or `rollout/deploy-canary` for a task of a DAG
that the `rollout` task runs through a templateRef):
  RUN/status.json                    workflow phase, parameters, and per task path: phase, started, finished, argv,
                                     fingerprint, fingerprint_parts, decision (why it was reused or run)
  RUN/runner.log                     every run's task lines, appended: what ran, what was reused, and why
  RUN/TASK/log.txt                   the task's merged stdout+stderr
  RUN/TASK/outputs/<artifact>/       each output artifact folder; a consumer's input path points here (no copy)
  RUN/onExit/log.txt                 the exit handler's output (spec.onExit), when the spec has one

Argo's composition is followed, not bent: a task with `templateRef` runs the referenced template of a
WorkflowTemplate rendered in the same folder (by metadata.name); a DAG template runs as a nested DAG whose inputs
come from the task's arguments (the entrypoint's from the workflow's parameters, as Argo passes spec.arguments to
it), with `when`/`depends` among its own tasks. When the DAG is over, Succeeded or Failed, the `onExit` template
runs with workflow.status, workflow.failures, workflow.duration and workflow.namespace set (exit_handler.py); a
failing handler fails a run that had succeeded, as in Argo. A run stopped by --stop-after is not over (it resumes),
so its handler does not run.

Tasks run one at a time in dependency order (a 2-core laptop gains nothing from running stages side by side).
This runner is the one reuse authority. A task is reused, not re-run, when its fingerprint equals the one a
previous successful run recorded in the same folder and its outputs exist. The fingerprint covers everything
the result depends on (workflows/runner/fingerprint.py): the substituted args, the env (the template's, `--env`,
and the `SENTIMENTOPS_*` variables the stage reads), the content of its input artifacts, the tasks it depends
on (one that ran again makes it run again), its resolved settings (the selected profile's `common` section and
the stage's own section, key by key) and the code version (a hash of the package source).
So an edited profile value re-runs the stages that read it and their dependents, a code edit re-runs
everything, and a failed or `--stop-after` run resumes where it stopped. Each decision names the parts that
changed, e.g. `register  Succeeded  in 3.1s; re-run: settings changed: register.baseline_accuracy`.
A DAG task's own fingerprint combines its tasks' identities, so a task after it re-runs when one of them ran.
The exit handler is never reused: it reports this run, so it runs every time.
A fan-out task (`withParam`, `withItems`) runs its template once per item, as `TASK(0)`, `TASK(1)`, ... (folders
and records of those names; Argo names the nodes `TASK(0:<item>)`), one item after the other; each item is reused
or run on its own fingerprint, so a re-run after one failed item runs that item alone.
retryStrategy is not applied locally: a local failure is reported at once, and re-running resumes.

Longer than 350 lines: `_Run` is one state machine (order, `when`/`depends`, nested DAGs, artifact mapping, reuse,
the exit handler, status file); the fingerprint, the exit handler's variables and the process streaming already
live apart (fingerprint.py, exit_handler.py, process.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sentimentops.steps.core.logs import emit
from sentimentops.steps.core.manifests import hash_dir
from sentimentops.workflows.argo.expressions import ExpressionError, evaluate_when
from sentimentops.workflows.argo.spec import (
    ContainerTemplate,
    DagTask,
    DagTemplate,
    Scope,
    SpecError,
    WorkflowSpec,
    depends_on,
    depends_satisfied,
    item_values,
    items_of,
    load_spec,
    substitute,
    topological_order,
)
from sentimentops.workflows.runner import exit_handler
from sentimentops.workflows.runner import fingerprint as fp
from sentimentops.workflows.runner.exit_handler import FAILED
from sentimentops.workflows.runner.process import run_streaming

_FROM = re.compile(r"^\{\{\s*tasks\.([^.{}]+)\.outputs\.artifacts\.([^.{}]+)\s*\}\}$")
DONE = ("Succeeded", "Reused")
EXIT_HANDLER = "onExit"  # its record and folder (Argo names the node <workflow>.onExit)


@dataclass
class TaskRecord:
    """One task's state; serialised into status.json after every transition."""

    name: str  # the task's path: `train`, `rollout/analyse`, `onExit`
    phase: str = "Pending"  # Pending Running Succeeded Reused Failed Error Skipped Omitted
    template: str = ""
    started: str | None = None
    finished: str | None = None
    argv: list[str] = field(default_factory=list)
    exit_code: int | None = None
    log: str | None = None
    fingerprint: str | None = None
    fingerprint_parts: dict[str, str] = field(default_factory=dict)  # part -> short hash (fingerprint.py)
    decision: str = ""  # why it was reused or run: `reused: fingerprint unchanged`, `re-run: settings changed: ...`
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # output parameter -> value


@dataclass(frozen=True)
class RunResult:
    phase: str  # Succeeded | Failed | Error | Stopped
    run_dir: Path
    workflow_name: str
    parameters: dict[str, str]
    tasks: dict[str, TaskRecord]  # by task path
    failed_task: str | None = None  # the path of the task that failed the run (a nested one: `rollout/analyse`)
    message: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.phase in FAILED else 0


@dataclass(frozen=True)
class Invocation:
    """A task fully resolved against the run folder: what to execute and what it reads and writes."""

    argv: list[str]
    env: dict[str, str]  # template env (substituted) + --env overrides
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    output_parameters: dict[str, tuple[Path, str | None]]

    def fingerprint_parts(self, environ: Mapping[str, str]) -> dict[str, str]:
        """args, env, inputs and resolved settings (fingerprint.py); `environ` is the runner's own environment."""
        stage = fp.stage_of(self.argv)
        sections = fp.sections_of(stage)
        env = fp.applicable_env(environ, sections) | self.env  # what the step process sees
        parts = {"args": fp.short_hash(self.argv)}
        parts |= {f"env.{k}": fp.short_hash(v) for k, v in sorted(env.items())}
        parts |= {f"input.{name}": fp.short_hash(hash_dir(path)) for name, path in sorted(self.inputs.items())}
        try:
            parts |= fp.settings_parts(sections, fp.profile_name(self.argv, env))
        except (ValueError, OSError) as exc:  # an unknown profile, an unreadable file: the step could not run either
            raise SpecError(f"{stage}: settings: {exc}") from exc
        return parts


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class _Dag:
    """One DAG being run: the entrypoint, or a DAG template a task runs (its tasks are `prefix` + name)."""

    template: DagTemplate
    scope: Scope  # where its tasks' templates are looked up
    prefix: str  # "" or "rollout/"
    inputs: Mapping[str, str]  # its resolved input parameters


def bind_inputs(wanted: Mapping[str, str | None], given: Mapping[str, str], where: str) -> dict[str, str]:
    """A template's input parameters from the arguments given, else their defaults; a missing one is an error."""
    values = {}
    for name, default in wanted.items():
        if name in given:
            values[name] = given[name]
        elif default is not None:
            values[name] = default
        else:
            raise SpecError(f"{where}: input parameter {name} has no argument and no default")
    return values


def resolve_parameters(spec: WorkflowSpec, overrides: Mapping[str, str]) -> dict[str, str]:
    """Template defaults overridden like `argo submit -p`; an unknown name or a value outside enum is an error."""
    unknown = sorted(set(overrides) - set(spec.parameters))
    if unknown:
        raise SpecError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(spec.parameters)}")
    params = {**spec.parameters, **overrides}
    for name, allowed in spec.enums.items():
        if params[name] not in allowed:
            raise SpecError(f"parameter {name}={params[name]!r} is not one of {', '.join(allowed)}")
    return params


class _Run:
    def __init__(self, spec: WorkflowSpec, run_dir: Path, params: dict[str, str], env: Mapping[str, str],
                 workflow_name: str, out: TextIO) -> None:
        self.spec, self.run_dir, self.params, self.cli_env, self.out = spec, run_dir, params, dict(env), out
        self.workflow_name = workflow_name
        self.records: dict[str, TaskRecord] = {}
        self.containers: dict[str, ContainerTemplate] = {}  # task path -> the container template it ran
        self.previous = self._load_previous()
        self.code = fp.code_parts()  # once per run: hashing the source per task would cost seconds for nothing
        self.stop_after: str | None = None
        self.stopped = False
        self.first_failure: str | None = None  # the leaf task that failed first
        self.dag_paths: set[str] = set()  # tasks that ran a DAG template

    def _load_previous(self) -> dict[str, dict]:
        try:
            return json.loads((self.run_dir / "status.json").read_text())["tasks"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return {}

    def save(self, phase: str) -> None:
        status = {
            "workflow": self.workflow_name,
            "template": str(self.spec.source) if self.spec.source else None,
            "phase": phase,
            "parameters": self.params,
            "tasks": {name: asdict(rec) for name, rec in self.records.items()},
        }
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=2) + "\n")
        os.replace(tmp, self.run_dir / "status.json")  # readers never see a half-written file

    def say(self, rec: TaskRecord, detail: str = "") -> None:
        self.line(f"{rec.name:<12} {rec.phase}{'  ' + detail if detail else ''}")

    def line(self, text: str) -> None:
        """A line of the run's transcript: on `out`, between the steps' own lines, and appended to RUN/runner.log."""
        emit(f"[runner] {text}", stream=self.out)
        with open(self.run_dir / "runner.log", "a") as log:
            log.write(f"{_now()} {text}\n")

    def workflow_values(self) -> dict[str, str]:
        vals = {"workflow.name": self.workflow_name, "workflow.namespace": exit_handler.NAMESPACE}
        return vals | {f"workflow.parameters.{k}": v for k, v in self.params.items()}

    def values(self, dag: _Dag) -> dict[str, str]:
        """Variables visible to a DAG's fields (task arguments, `when`): the workflow's, the DAG's inputs, and its
        own tasks' results (`tasks.X` names a task of the same DAG, as in Argo)."""
        vals = self.workflow_values() | {f"inputs.parameters.{k}": v for k, v in dag.inputs.items()}
        for task in dag.template.tasks:
            rec = self.records.get(dag.prefix + task.name)
            if rec is None:
                continue
            if rec.phase in DONE + FAILED + ("Skipped", "Omitted"):
                vals[f"tasks.{task.name}.status"] = "Succeeded" if rec.phase == "Reused" else rec.phase
            vals |= {f"tasks.{task.name}.outputs.parameters.{k}": v for k, v in rec.outputs.items()}
        return vals

    def invocation(self, path: str, task: DagTask, tpl: ContainerTemplate, dag: _Dag,
                   dag_values: dict[str, str]) -> Invocation:
        where = f"task {path}"
        inputs: dict[str, Path] = {}
        for name in tpl.input_artifacts:
            ref = task.artifacts.get(name)
            m = _FROM.match(ref or "")
            if m is None:
                raise SpecError(f"{where}: input artifact {name} needs from: '{{{{tasks.X.outputs.artifacts.Y}}}}'")
            producer, art = m.groups()
            producer_path = dag.prefix + producer
            record = self.records.get(producer_path)
            if record is None or record.phase not in DONE:
                raise SpecError(f"{where}: input artifact {name} comes from {producer}, which has not succeeded")
            if producer_path not in self.containers or art not in self.containers[producer_path].output_artifacts:
                raise SpecError(f"{where}: task {producer} has no output artifact {art}")
            inputs[name] = self.run_dir / producer_path / "outputs" / art
        outputs = {name: self.run_dir / path / "outputs" / name for name in tpl.output_artifacts}
        given = {k: substitute(v, dag_values, where) for k, v in task.parameters.items()}
        values = dict(dag_values)
        values |= {f"inputs.parameters.{k}": v for k, v in bind_inputs(tpl.input_parameters, given, where).items()}
        values |= {f"inputs.artifacts.{k}.path": str(p) for k, p in inputs.items()}
        values |= {f"outputs.artifacts.{k}.path": str(p) for k, p in outputs.items()}
        # Container paths written literally (not via {{...path}}) are mapped too, longest path first.
        mounts = sorted([(tpl.input_artifacts[k], p) for k, p in inputs.items()]
                        + [(tpl.output_artifacts[k], p) for k, p in outputs.items()], key=lambda m: -len(m[0]))

        def local(text: str) -> str:
            for container_path, local_path in mounts:
                if text == container_path or text.startswith(container_path + "/"):
                    return str(local_path) + text[len(container_path):]
            return text

        out_params: dict[str, tuple[Path, str | None]] = {}
        for name, (out_path, default) in tpl.output_parameters.items():
            mapped = local(out_path)
            if mapped == out_path:
                raise SpecError(f"{where}: output parameter {name} path {out_path} is not inside an artifact folder")
            out_params[name] = (Path(mapped), default)
        argv = [local(substitute(a, values, where)) for a in (*tpl.command, *tpl.args)]
        env = {k: local(substitute(v, values, where)) for k, v in tpl.env} | self.cli_env
        return Invocation(argv, env, inputs, outputs, out_params)

    def read_outputs(self, inv: Invocation) -> dict[str, str]:
        missing = [f"{k} ({p})" for k, p in inv.outputs.items() if not p.exists()]
        if missing:
            raise FileNotFoundError(f"output artifact(s) not written: {', '.join(missing)}")
        values = {}
        for name, (path, default) in inv.output_parameters.items():
            if path.is_file():
                values[name] = path.read_text().strip()  # Argo trims the file's whitespace too
            elif default is not None:
                values[name] = default
            else:
                raise FileNotFoundError(f"output parameter {name}: {path} not written")
        return values

    def upstream_parts(self, task: DagTask, dag: _Dag) -> dict[str, str]:
        """Each dependency's identity in this run: unchanged while it is reused, new whenever it runs again."""
        parts = {}
        for dep in depends_on(task):
            r = self.records[dag.prefix + dep]
            phase = "Succeeded" if r.phase == "Reused" else r.phase
            parts[f"upstream.{dep}"] = fp.short_hash([phase, r.fingerprint, r.finished])
        return parts

    def decide(self, rec: TaskRecord, inv: Invocation) -> tuple[bool, str]:
        """(reuse?, why) against the record of the previous run in this folder."""
        prev = self.previous.get(rec.name) or {}
        phase = prev.get("phase")
        if phase in (None, "Pending"):
            return False, "run (not run before in this folder)"
        if phase not in DONE:
            return False, f"re-run (last run {phase})"
        if prev.get("fingerprint") != rec.fingerprint:
            before = prev.get("fingerprint_parts")
            why = fp.changes(before, rec.fingerprint_parts) if before else "fingerprint from an older runner"
            return False, f"re-run ({why})"
        missing = [name for name, path in inv.outputs.items() if not path.exists()]
        if missing:
            return False, f"re-run (output missing: {', '.join(missing)})"
        return True, "reused (fingerprint unchanged)"

    def execute(self, rec: TaskRecord, inv: Invocation) -> None:
        task_dir = self.run_dir / rec.name
        # Nothing half-written from an earlier attempt may survive into this one's outputs.
        shutil.rmtree(task_dir / "outputs", ignore_errors=True)
        (task_dir / "outputs").mkdir(parents=True)
        rec.phase, rec.started, rec.log = "Running", _now(), str(task_dir / "log.txt")
        self.save("Running")
        self.say(rec, rec.decision)
        self.line(f"{rec.name:<12} $ {shlex.join(inv.argv)}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **inv.env}
        if "SENTIMENTOPS_LOG_FORMAT" not in env and _is_terminal(self.out):
            # A step writes into a pipe, so it would log JSON lines (its pod format); a person is watching the
            # runner on a terminal here, so the steps log plain lines (steps/core/logs.py). Not in the fingerprint.
            env["SENTIMENTOPS_LOG_FORMAT"] = "text"
        result = run_streaming(rec.name, inv.argv, env, task_dir / "log.txt", self.out)
        rec.exit_code, rec.finished = result.exit_code, _now()
        if result.exit_code != 0:
            rec.phase, rec.message = "Failed", f"exit code {result.exit_code}; log: {rec.log}"
            return
        try:
            rec.outputs = self.read_outputs(inv)
            rec.phase, rec.message = "Succeeded", f"in {result.seconds:.1f}s"
        except FileNotFoundError as exc:
            rec.phase, rec.message = "Failed", f"{exc}; log: {rec.log}"

    def step(self, task: DagTask, rec: TaskRecord, dag: _Dag) -> None:
        """Decide Skipped / Reused / run for a task whose dependencies are satisfied (each item of a fan-out)."""
        if task.fans_out:
            self.run_fanout(task, rec, dag)
        else:
            self.run_task(task, rec, dag, self.values(dag))

    def run_task(self, task: DagTask, rec: TaskRecord, dag: _Dag, dag_values: dict[str, str]) -> None:
        when = substitute(task.when, dag_values, f"task {rec.name} when") if task.when else None
        if when is not None and not evaluate_when(when):
            rec.phase, rec.message = "Skipped", f"when false: {when}"
            return
        template, scope = self.spec.resolve(task, dag.scope)
        rec.template = template.name
        if isinstance(template, DagTemplate):
            self.run_nested(task, rec, template, scope, dag_values)
            return
        self.containers[rec.name] = template
        inv = self.invocation(rec.name, task, template, dag, dag_values)
        rec.argv = inv.argv
        rec.fingerprint_parts = inv.fingerprint_parts(os.environ) | self.upstream_parts(task, dag) | self.code
        rec.fingerprint = fp.combine(rec.fingerprint_parts)
        reuse, rec.decision = self.decide(rec, inv)
        if reuse:
            prev = self.previous[rec.name]
            rec.phase, rec.started, rec.finished = "Reused", prev.get("started"), prev.get("finished")
            rec.outputs, rec.log, rec.exit_code = self.read_outputs(inv), prev.get("log"), 0
            rec.message = "fingerprint unchanged"
        else:
            self.execute(rec, inv)

    def run_fanout(self, task: DagTask, rec: TaskRecord, dag: _Dag) -> None:
        """withParam / withItems: one run of the task per item, as `<task path>(i)`, with `{{item}}` and
        `{{item.KEY}}` set; then the task is done. In Argo every item starts at once (up to `parallelism`), so every
        item runs here too, one after the other, even after one failed: the task then fails with the first failed
        item's phase, and the tasks after it see that (Argo's TaskGroup node). No items: Skipped, as in Argo."""
        dag_values = self.values(dag)
        items = items_of(task, dag_values, f"task {rec.name}")
        rec.phase, rec.started = "Running", _now()
        rec.template = task.template or (task.template_ref.template if task.template_ref else "")
        self.dag_paths.add(rec.name)  # a failure is named by its item, not by the group
        if not items:
            rec.phase, rec.finished, rec.message = "Skipped", _now(), "Skipped, empty params"
            return
        rec.decision = f"fan-out over {len(items)} item(s)"
        self.say(rec, rec.decision)
        children: list[TaskRecord] = []
        for i, item in enumerate(items):
            path = f"{rec.name}({i})"
            child = self.records[path] = TaskRecord(path)
            one = replace(task, name=f"{task.name}({i})", with_param=None, with_items=None)
            try:
                self.run_task(one, child, dag, dag_values | item_values(item))
            except (SpecError, ExpressionError, OSError) as exc:
                child.phase, child.finished, child.message = "Error", _now(), str(exc)
            if child.phase in FAILED and child.name not in self.dag_paths:
                self.first_failure = self.first_failure or child.name
            self.say(child, child.message)
            self.save("Running")
            children.append(child)
        rec.fingerprint_parts = {f"item.{i}": fp.short_hash(["Succeeded" if c.phase == "Reused" else c.phase,
                                                             c.fingerprint, c.finished])
                                 for i, c in enumerate(children)}
        rec.fingerprint = fp.combine(rec.fingerprint_parts)
        rec.finished = max((c.finished for c in children if c.finished), default=None)
        phases = [c.phase for c in children]
        failed = next((c for c in children if c.phase in FAILED), None)
        if failed is not None:
            rec.phase, rec.message = failed.phase, f"child '{failed.name}' failed"
        elif all(p in ("Skipped", "Omitted") for p in phases):
            rec.phase, rec.message = "Skipped", "every item skipped"
        else:
            rec.phase = "Succeeded"
            rec.message = ", ".join(f"{phases.count(p)} {p}" for p in dict.fromkeys(phases))

    def run_nested(self, task: DagTask, rec: TaskRecord, template: DagTemplate, scope: Scope,
                   dag_values: dict[str, str]) -> None:
        """A task running a DAG template: its tasks run as `<task path>/<name>`, its inputs from the arguments."""
        where = f"task {rec.name}"
        self.dag_paths.add(rec.name)
        given = {k: substitute(v, dag_values, where) for k, v in task.parameters.items()}
        inner = _Dag(template, scope, rec.name + "/", bind_inputs(template.input_parameters, given, where))
        rec.phase, rec.started = "Running", _now()
        rec.decision = f"dag {scope.name}/{template.name}: {', '.join(t.name for t in template.tasks)}"
        self.say(rec, rec.decision)
        failed = self.run_dag(inner)
        children = [self.records[inner.prefix + t.name] for t in template.tasks]
        # Its identity for the tasks after it: its tasks' identities (stable while they are all reused).
        rec.fingerprint_parts = {f"task.{t.name}": fp.short_hash(["Succeeded" if c.phase == "Reused" else c.phase,
                                                                  c.fingerprint, c.finished])
                                 for t, c in zip(template.tasks, children, strict=True)}
        rec.fingerprint = fp.combine(rec.fingerprint_parts)
        rec.finished = max((c.finished for c in children if c.finished), default=None)
        if failed:  # Argo's message for a DAG node whose child failed (the notify handler folds such nodes away)
            rec.phase, rec.message = self.records[failed].phase, f"child '{failed}' failed"
        elif self.stopped:
            rec.phase, rec.message = "Pending", f"stopped after {self.stop_after}"
        else:
            phases = [c.phase for c in children]
            rec.phase = "Succeeded"
            rec.message = ", ".join(f"{phases.count(p)} {p}" for p in dict.fromkeys(phases))

    def run_dag(self, dag: _Dag) -> str | None:
        """Run one DAG's tasks in dependency order; returns the path of the task that failed it, if any."""
        order = topological_order(dag.template)
        for task in order:
            self.records.setdefault(dag.prefix + task.name, TaskRecord(dag.prefix + task.name))
        failed: str | None = None
        for task in order:
            rec = self.records[dag.prefix + task.name]
            if self.stopped:
                continue  # stays Pending: a later run resumes here
            phases = {t.name: self.records[dag.prefix + t.name].phase for t in dag.template.tasks}
            if failed and dag.template.fail_fast:
                rec.phase, rec.message = "Omitted", f"not started: {failed} failed"
            elif not depends_satisfied(task, phases):
                rec.phase, rec.message = "Omitted", f"depends not satisfied: {task.depends}"
            else:
                try:
                    self.step(task, rec, dag)
                except (SpecError, ExpressionError, OSError) as exc:
                    # A bad `when`, an unknown variable, a missing executable: Argo marks such a node Error.
                    rec.phase, rec.finished, rec.message = "Error", _now(), str(exc)
            if rec.phase in FAILED:
                failed = failed or rec.name
                if rec.name not in self.dag_paths:  # a DAG's failure is one of its tasks': that one is named
                    self.first_failure = self.first_failure or rec.name
            self.say(rec, rec.message)
            self.save("Running")
            if rec.name == self.stop_after and rec.phase in DONE:
                self.stopped = True
        return failed

    def run_exit_handler(self, status: str, started: float) -> TaskRecord:
        """spec.onExit after the DAG, with Argo's exit-handler variables; never reused (it reports this run)."""
        assert self.spec.on_exit is not None
        tpl = self.spec.on_exit
        rec = self.records[EXIT_HANDLER] = TaskRecord(EXIT_HANDLER, template=tpl.name)
        failures = [exit_handler.FailedNode(r.name, r.template, r.phase, r.message, r.finished)
                    for r in self.records.values() if r.phase in FAILED and r.name != EXIT_HANDLER]
        values = self.workflow_values() | {
            "workflow.status": status,
            "workflow.failures": exit_handler.failures_value(failures),
            "workflow.duration": exit_handler.duration_value(time.monotonic() - started),
        }
        root = _Dag(self.spec.entrypoint, self.spec.scope, "", {})
        task = DagTask(EXIT_HANDLER, tpl.name, "", None, {}, {})
        rec.decision = "run (exit handler: runs every time)"
        try:
            self.execute(rec, self.invocation(EXIT_HANDLER, task, tpl, root, values))
        except (SpecError, ExpressionError, OSError) as exc:
            rec.phase, rec.finished, rec.message = "Error", _now(), str(exc)
        self.say(rec, rec.message)
        return rec

    def run(self, stop_after: str | None) -> RunResult:
        started = time.monotonic()
        self.stop_after = stop_after
        root = _Dag(self.spec.entrypoint, self.spec.scope, "",
                    bind_inputs(self.spec.entrypoint.input_parameters, self.params, "entrypoint"))
        for task in self.spec.tasks:
            self.records[task.name] = TaskRecord(task.name)
        self.save("Running")
        plan = " -> ".join(t.name for t in topological_order(self.spec.entrypoint))
        self.line(f"workflow {self.workflow_name}: {plan} (run folder {self.run_dir})")
        failed = self.run_dag(root)
        leaf = self.first_failure or failed
        if failed:
            phase = exit_handler.workflow_status(self.records[failed].phase)
            message = f"task {leaf} failed: {self.records[leaf].message}"
        elif self.stopped:
            phase, message = "Stopped", f"stopped after {stop_after}"
        else:
            phase, message = "Succeeded", "all tasks done"
        if self.spec.on_exit is not None and phase != "Stopped":
            handler = self.run_exit_handler(phase, started)
            if handler.phase in FAILED and phase == "Succeeded":
                phase, leaf = handler.phase, EXIT_HANDLER
                message = f"exit handler {EXIT_HANDLER} failed: {handler.message}"
        self.save(phase)
        self.line(f"workflow {self.workflow_name} {phase}: {message}")
        return RunResult(phase, self.run_dir, self.workflow_name, self.params, self.records,
                         leaf if phase in FAILED else None, message)


def local_workflow_name(spec: WorkflowSpec, run_dir: Path) -> str:
    """Stable per run folder (it is part of every task's env, hence of the fingerprints)."""
    suffix = re.sub(r"[^a-z0-9-]+", "-", run_dir.resolve().name.lower()).strip("-") or "run"
    return f"{spec.name}-{suffix}"[:63].rstrip("-")


def run(
    template: Path,
    run_dir: Path,
    parameters: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    stop_after: str | None = None,
    out: TextIO | None = None,
    workflow_name: str | None = None,
) -> RunResult:
    """Run the DAG of a rendered Workflow/WorkflowTemplate (then its exit handler); raises SpecError before
    starting anything if the spec, a parameter or `stop_after` is invalid."""
    spec = load_spec(template)
    params = resolve_parameters(spec, parameters or {})
    paths = spec.task_paths()
    if stop_after is not None and stop_after not in paths:
        raise SpecError(f"--stop-after {stop_after}: no such task ({', '.join(paths)})")
    bind_inputs(spec.entrypoint.input_parameters, params, f"entrypoint {spec.entrypoint.name}")
    check_dags(spec)  # reject cycles and unknown dependencies before any side effect
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    name = workflow_name or local_workflow_name(spec, run_dir)
    return _Run(spec, run_dir, params, env or {}, name, out or sys.stdout).run(stop_after)


def check_dags(spec: WorkflowSpec) -> None:
    """Every DAG the run can reach orders (no cycle, no unknown dependency)."""

    def walk(dag: DagTemplate, scope: Scope) -> None:
        topological_order(dag)
        for task in dag.tasks:
            template, inner = spec.resolve(task, scope)
            if isinstance(template, DagTemplate):
                walk(template, inner)

    walk(spec.entrypoint, spec.scope)
