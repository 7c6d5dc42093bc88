"""The local runner follows Argo's composition: `templateRef` to a WorkflowTemplate rendered beside the spec (run as a
nested DAG, its tasks recorded as `<task>/<name>`) and `onExit` (run after the DAG whatever the outcome, with
Argo's exit-handler variables). Real subprocesses of tiny `python -c` commands, as in test_local_runner.py.

Every task appends a line to $ORDER_LOG (passed with --env), so a test sees what ran and in which order.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from sentimentops.workflows.argo.spec import SpecError, load_spec
from sentimentops.workflows.runner.local_runner import run

# argv: NAME WORD OUT: logs NAME, writes WORD to OUT/word (an output parameter) unless WORD is "fail" (exit 3).
STEP = r"""
import os, pathlib, sys
name, word, out = sys.argv[1:4]
open(os.environ['ORDER_LOG'], 'a').write(f'{name}:{word}\n')
if word == 'fail':
    sys.exit(3)
out = pathlib.Path(out); out.mkdir(parents=True)
(out / 'word').write_text(word + '\n')
"""
# The exit handler: records its argv (what Argo would substitute) as JSON, exits with $HANDLER_EXIT (default 0).
HANDLER = r"""
import json, os, sys
open(os.environ['ORDER_LOG'], 'a').write('handler\n')
open(os.environ['HANDLER_LOG'], 'a').write(json.dumps(sys.argv[1:]) + '\n')
sys.exit(int(os.environ.get('HANDLER_EXIT', '0')))
"""


def step_template(name: str) -> dict:
    return {
        "name": name,
        "inputs": {"parameters": [{"name": "word"}]},
        "outputs": {"artifacts": [{"name": "out", "path": "/tmp/out/out"}],
                    "parameters": [{"name": "word", "valueFrom": {"path": "/tmp/out/out/word"}}]},
        "container": {"image": "python:3.11", "command": ["python", "-c", STEP],
                      "args": [name, "{{inputs.parameters.word}}", "{{outputs.artifacts.out.path}}"]},
        "retryStrategy": {"limit": "1"},
    }


def task(name: str, template: str, word: str, **fields) -> dict:
    return {"name": name, "template": template, "arguments": {"parameters": [{"name": "word", "value": word}]},
            **fields}


def library() -> dict:
    """WorkflowTemplate `lib`: DAG `flow` (inputs word, and mode defaulting to go): first -> second, second only
    when first's output is not `stop`; the tasks name their own templates in `lib`, never the caller's."""
    flow = {"name": "flow",
            "inputs": {"parameters": [{"name": "word"}, {"name": "mode", "value": "go"}]},
            "dag": {"tasks": [
                task("first", "lib-step", "{{inputs.parameters.word}}"),
                task("second", "lib-step", "{{tasks.first.outputs.parameters.word}}-{{inputs.parameters.mode}}",
                     depends="first", when="{{tasks.first.outputs.parameters.word}} != stop"),
            ]}}
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "lib"},
            "spec": {"entrypoint": "flow", "templates": [step_template("lib-step"), flow],
                     "arguments": {"parameters": [{"name": "word", "value": "solo"}]}}}


def main(word_to_lib: str = "{{tasks.produce.outputs.parameters.word}}", when: str | None = None,
         on_exit: bool = True, ref_template: str = "flow") -> dict:
    """WorkflowTemplate `main`: produce -> call (templateRef lib/flow) -> after; onExit: report."""
    call = {"name": "call", "depends": "produce", "templateRef": {"name": "lib", "template": ref_template},
            "arguments": {"parameters": [{"name": "word", "value": word_to_lib}]}}
    if when:
        call["when"] = when
    templates = [step_template("step"),
                 {"name": "pipeline", "dag": {"tasks": [
                     task("produce", "step", "{{workflow.parameters.word}}"), call,
                     task("after", "step", "after", depends="call")]}}]
    spec = {"entrypoint": "pipeline", "templates": templates,
            "arguments": {"parameters": [{"name": "word", "value": "hello"}, {"name": "reason", "value": "test"}]}}
    if on_exit:
        templates.append({"name": "report", "retryStrategy": {"limit": "1"}, "container": {
            "image": "python:3.11", "command": ["python", "-c", HANDLER],
            "args": ["{{workflow.status}}", "{{workflow.failures}}", "{{workflow.duration}}",
                     "{{workflow.namespace}}", "{{workflow.name}}", "{{workflow.parameters.reason}}"]}})
        spec["onExit"] = "report"
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "main"},
            "spec": spec}


def write(folder: Path, *docs: dict) -> Path:
    folder.mkdir(exist_ok=True)
    for doc in docs:
        (folder / f"{doc['metadata']['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / f"{docs[0]['metadata']['name']}.yaml"


def go(tmp_path: Path, spec: Path, **kwargs):
    env = {"ORDER_LOG": str(tmp_path / "order.log"), "HANDLER_LOG": str(tmp_path / "handler.log"),
           **kwargs.pop("env", {})}
    return run(spec, tmp_path / "run", env=env, out=io.StringIO(), **kwargs)


def order(tmp_path: Path) -> list[str]:
    log = tmp_path / "order.log"
    return log.read_text().split() if log.exists() else []


def handler_calls(tmp_path: Path) -> list[dict]:
    """Each exit handler call's arguments, decoded the way a handler must decode Argo's."""
    log = tmp_path / "handler.log"
    calls = []
    for line in (log.read_text().splitlines() if log.exists() else []):
        status, failures, duration, namespace, name, reason = json.loads(line)
        # Argo hands the failures over as a JSON string holding the JSON list (strconv.Quote), "null" when none.
        decoded = json.loads(json.loads(failures))
        calls.append({"status": status, "failures": decoded, "duration": float(duration), "namespace": namespace,
                      "name": name, "reason": reason, "raw_failures": failures})
    return calls


@pytest.fixture
def spec(tmp_path) -> Path:
    return write(tmp_path / "wf", main(), library())


def test_template_ref_runs_the_referenced_dag_as_nested_tasks(tmp_path, spec):
    result = go(tmp_path, spec, parameters={"word": "bonjour"})
    assert result.phase == "Succeeded", result.message
    # the referenced DAG's inputs come from the calling task's arguments, its default fills the rest
    assert order(tmp_path) == ["step:bonjour", "lib-step:bonjour", "lib-step:bonjour-go", "step:after", "handler"]
    assert [p for p in result.tasks] == ["produce", "call", "after", "call/first", "call/second", "onExit"]
    assert result.tasks["call"].phase == "Succeeded" and result.tasks["call"].template == "flow"
    assert result.tasks["call/second"].outputs == {"word": "bonjour-go"}
    run_dir = tmp_path / "run"
    assert (run_dir / "call/second/outputs/out/word").read_text() == "bonjour-go\n"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Succeeded"
    assert status["tasks"]["call/first"]["fingerprint"] and status["tasks"]["call"]["fingerprint"]


def test_when_inside_the_referenced_dag_and_on_the_calling_task(tmp_path):
    spec = write(tmp_path / "wf", main(), library())
    result = go(tmp_path, spec, parameters={"word": "stop"})  # first says stop: second is skipped
    assert result.phase == "Succeeded"
    assert result.tasks["call/second"].phase == "Skipped"
    gated = write(tmp_path / "gated", main(when="{{workflow.parameters.word}} == go"), library())
    result = run(gated, tmp_path / "run2", env={"ORDER_LOG": str(tmp_path / "order2.log"),
                                                   "HANDLER_LOG": str(tmp_path / "handler2.log")},
                 out=io.StringIO())
    assert result.phase == "Succeeded" and result.tasks["call"].phase == "Skipped"
    assert "call/first" not in result.tasks  # Argo creates no nodes for a skipped DAG
    assert result.tasks["after"].phase == "Succeeded"  # a bare dependency on a skipped task is satisfied


def test_nested_tasks_are_reused_and_rerun_like_top_level_ones(tmp_path, spec):
    go(tmp_path, spec)
    second = go(tmp_path, spec)
    assert [second.tasks[p].phase for p in ("produce", "call/first", "call/second", "after")] == ["Reused"] * 4
    assert second.tasks["call/first"].decision == "reused (fingerprint unchanged)"
    # the exit handler reports each run: never reused
    assert second.tasks["onExit"].phase == "Succeeded" and order(tmp_path).count("handler") == 2
    assert order(tmp_path).count("step:after") == 1
    third = go(tmp_path, spec, parameters={"word": "changed"})
    assert [third.tasks[p].phase for p in ("produce", "call/first", "call/second", "after")] == ["Succeeded"] * 4
    assert third.tasks["after"].decision == "re-run (upstream re-ran: call)"


def test_a_failure_inside_the_referenced_dag_fails_the_run_and_names_the_task(tmp_path):
    spec = write(tmp_path / "wf", main(word_to_lib="fail"), library())
    result = go(tmp_path, spec)
    assert result.phase == "Failed" and result.exit_code == 1
    assert result.failed_task == "call/first" and "exit code 3" in result.message
    assert result.tasks["call"].phase == "Failed" and result.tasks["call/second"].phase == "Omitted"
    assert result.tasks["after"].phase == "Omitted"
    (call,) = handler_calls(tmp_path)  # the handler ran after the failure, told what failed
    assert call["status"] == "Failed"
    failed = {f["displayName"]: f for f in call["failures"]}
    assert set(failed) == {"first", "call"}  # the pod's node and the DAG node, as Argo lists them
    first = failed["first"]
    assert set(first) == {"displayName", "message", "templateName", "phase", "podName", "finishedAt"}
    assert first["templateName"] == "lib-step" and first["phase"] == "Failed" and "exit code 3" in first["message"]
    assert first["finishedAt"].endswith("Z") and first["podName"] == ""


def test_exit_handler_gets_argos_variables_after_a_success(tmp_path, spec):
    result = go(tmp_path, spec, workflow_name="main-abc")
    (call,) = handler_calls(tmp_path)
    assert call == {"status": "Succeeded", "failures": None, "duration": call["duration"], "namespace": "local",
                    "name": "main-abc", "reason": "test", "raw_failures": '"null"'}
    assert 0 < call["duration"] < 120
    assert result.tasks["onExit"].phase == "Succeeded"
    assert (tmp_path / "run/onExit/log.txt").is_file()


def test_an_error_status_reaches_the_exit_handler(tmp_path):
    doc = main()
    doc["spec"]["templates"][1]["dag"]["tasks"][0]["when"] = "{{workflow.parameters.word}} + 1"  # not govaluate
    result = go(tmp_path, write(tmp_path / "wf", doc, library()))
    assert result.phase == "Error" and result.failed_task == "produce"
    assert [c["status"] for c in handler_calls(tmp_path)] == ["Error"]


def test_a_failing_exit_handler_fails_a_successful_run(tmp_path, spec):
    result = go(tmp_path, spec, env={"HANDLER_EXIT": "1"})
    assert result.phase == "Failed" and result.exit_code == 1 and result.failed_task == "onExit"
    assert "exit handler onExit failed" in result.message
    assert json.loads((tmp_path / "run/status.json").read_text())["phase"] == "Failed"


def test_a_stopped_run_is_not_over_so_its_exit_handler_waits(tmp_path, spec):
    stopped = go(tmp_path, spec, stop_after="call/first")
    assert stopped.phase == "Stopped" and stopped.tasks["call/second"].phase == "Pending"
    assert handler_calls(tmp_path) == []
    resumed = go(tmp_path, spec)
    assert [resumed.tasks[p].phase for p in ("produce", "call/first", "call/second")] == \
        ["Reused", "Reused", "Succeeded"]
    assert [c["status"] for c in handler_calls(tmp_path)] == ["Succeeded"]


def test_the_entrypoints_inputs_come_from_the_workflow_parameters(tmp_path):
    # Argo passes spec.arguments to the entrypoint: running `lib` on its own binds its `word` parameter to flow.word.
    spec = write(tmp_path / "wf", library())
    result = go(tmp_path, spec)
    assert result.phase == "Succeeded" and order(tmp_path) == ["lib-step:solo", "lib-step:solo-go"]


@pytest.mark.parametrize("ref, expected", [
    ({"name": "nope", "template": "flow"}, "templateRef 'nope' is not a WorkflowTemplate beside the spec"),
    ({"name": "lib", "template": "nope"}, "template 'nope' does not exist in lib"),
])
def test_a_dangling_template_ref_fails_before_anything_runs(tmp_path, ref, expected):
    doc = main()
    doc["spec"]["templates"][1]["dag"]["tasks"][1]["templateRef"] = ref
    with pytest.raises(SpecError, match=expected):
        go(tmp_path, write(tmp_path / "wf", doc, library()))
    assert order(tmp_path) == []


def test_the_rendered_training_template_resolves_the_rollout_by_template_ref():
    from sentimentops.workflows import render

    spec = load_spec(render.RENDERED_DIR / "sentiment-training.yaml")
    (rollout,) = [t for t in spec.tasks if t.template_ref is not None]
    template, scope = spec.resolve(rollout, spec.scope)
    assert scope.name == "sentiment-rollout" and template.name == "rollout"
    assert [t.name for t in template.tasks] == ["deploy-canary", "analyse", "promote", "rollback"]
    assert spec.on_exit is not None and spec.on_exit.name == "notify"
    assert "rollout/analyse" in spec.task_paths()
