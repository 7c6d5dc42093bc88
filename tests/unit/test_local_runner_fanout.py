"""The local runner's fan-out (withParam, withItems) on small synthetic specs whose tasks are `python -c` one-liners:
one run per item with {{item}} / {{item.KEY}} substituted (a map item as Go's compact, key-sorted JSON), the
dependent task after all items, a failed item failing the group (the other items still run, as in Argo where all
start at once), a re-run that runs the failed item alone, an empty list skipping the task, and the checks that
reject a loop the runner or Argo could not run."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from sentimentops.workflows.argo.spec import SpecError, item_text, item_values
from sentimentops.workflows.checks.semantic_check import semantic_errors
from sentimentops.workflows.runner.local_runner import run

# Writes the JSON list it is given (argv[1]) as the `items` output parameter.
PLAN = r"""
import pathlib, sys
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True)
(out / 'items').write_text(sys.argv[1])
"""
# Logs its argv; fails when the FAIL_ITEM file names its first argument.
WORK = r"""
import json, os, pathlib, sys
fail = pathlib.Path(os.environ['FAIL_ITEM'])
if fail.exists() and fail.read_text() == sys.argv[1]:
    sys.exit(3)
open(os.environ['ORDER_LOG'], 'a').write(json.dumps(sys.argv[1:]) + '\n')
"""
JOIN = r"""
import os
open(os.environ['ORDER_LOG'], 'a').write('"join"\n')
"""


def container(name: str, code: str, args: list[str], inputs: dict | None = None, outputs: dict | None = None) -> dict:
    return {"name": name, "container": {"image": "python:3.11", "command": ["python", "-c", code], "args": args},
            "inputs": inputs or {}, "outputs": outputs or {}, "retryStrategy": {"limit": "1"}}


def spec(items: str, work_args: list[str] | None = None, loop: dict | None = None) -> dict:
    work_args = work_args or ["{{inputs.parameters.a}}", "{{inputs.parameters.b}}"]
    loop = loop if loop is not None else {"withParam": "{{tasks.plan.outputs.parameters.items}}"}
    return {
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate", "metadata": {"name": "fan"},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [{"name": "items", "value": items, "description": "the JSON list"}]},
            "templates": [
                container("plan", PLAN, ["{{inputs.parameters.items}}", "{{outputs.artifacts.plan.path}}"],
                          inputs={"parameters": [{"name": "items"}]},
                          outputs={"artifacts": [{"name": "plan", "path": "/tmp/out/plan"}],
                                   "parameters": [{"name": "items", "valueFrom": {"path": "/tmp/out/plan/items"}}]}),
                container("work", WORK, work_args,
                          inputs={"parameters": [{"name": "a"}, {"name": "b", "value": "-"}]}),
                container("join", JOIN, []),
                {"name": "main", "dag": {"tasks": [
                    {"name": "plan", "template": "plan", "arguments": {"parameters": [
                        {"name": "items", "value": "{{workflow.parameters.items}}"}]}},
                    {"name": "work", "template": "work", "depends": "plan", **loop,
                     "arguments": {"parameters": [{"name": "a", "value": "{{item}}"}]}},
                    {"name": "join", "template": "join", "depends": "work"},
                ]}},
            ],
        },
    }


def go(tmp_path: Path, doc: dict):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {"ORDER_LOG": str(tmp_path / "order.log"), "FAIL_ITEM": str(tmp_path / "fail")}
    return run(path, tmp_path / "run", env=env, out=io.StringIO())


def logged(tmp_path: Path) -> list:
    log = tmp_path / "order.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_item_text_follows_argo():
    assert item_text("a b") == "a b" and item_text(3) == "3" and item_text(True) == "true"
    assert item_text({"z": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"z":1}'  # compact, keys sorted (Go's map order)
    assert item_values({"index": 2, "name": "x"}) == {"item": '{"index":2,"name":"x"}', "item.index": "2",
                                                      "item.name": "x"}


def test_with_param_runs_one_task_per_item_then_the_dependents(tmp_path):
    doc = spec('[{"index": 0, "rows": 5}, {"index": 1, "rows": 4}, "plain"]')
    doc["spec"]["templates"][3]["dag"]["tasks"][1]["arguments"]["parameters"].append(
        {"name": "b", "value": "{{item}}"})
    result = go(tmp_path, doc)
    assert result.phase == "Succeeded", result.message
    assert logged(tmp_path) == [['{"index":0,"rows":5}'] * 2, ['{"index":1,"rows":4}'] * 2, ["plain", "plain"],
                                "join"]
    phases = {name: rec.phase for name, rec in result.tasks.items()}
    assert phases == {"plan": "Succeeded", "work": "Succeeded", "work(0)": "Succeeded", "work(1)": "Succeeded",
                      "work(2)": "Succeeded", "join": "Succeeded"}
    assert result.tasks["work"].message == "3 Succeeded"
    assert (tmp_path / "run" / "work(1)" / "log.txt").exists()


def test_item_fields_and_with_items(tmp_path):
    doc = spec("[]", loop={"withItems": [{"name": "x", "n": 1}, {"name": "y", "n": 2}]})
    doc["spec"]["templates"][3]["dag"]["tasks"][1]["arguments"]["parameters"] = [
        {"name": "a", "value": "{{item.name}}"}, {"name": "b", "value": "{{item.n}}"}]
    assert go(tmp_path, doc).phase == "Succeeded"
    assert logged(tmp_path) == [["x", "1"], ["y", "2"], "join"]


def test_a_failed_item_fails_the_group_after_every_item_ran_and_a_rerun_runs_it_alone(tmp_path):
    (tmp_path / "fail").write_text("b")
    result = go(tmp_path, spec('["a", "b", "c"]'))
    assert result.phase == "Failed" and result.failed_task == "work(1)"
    assert [line[0] for line in logged(tmp_path)] == ["a", "c"]  # c still ran; join did not
    assert result.tasks["work"].phase == "Failed" and result.tasks["work"].message == "child 'work(1)' failed"
    assert result.tasks["join"].phase == "Omitted"

    (tmp_path / "fail").unlink()
    (tmp_path / "order.log").unlink()
    again = go(tmp_path, spec('["a", "b", "c"]'))
    assert again.phase == "Succeeded"
    assert [again.tasks[f"work({i})"].phase for i in range(3)] == ["Reused", "Succeeded", "Reused"]
    assert logged(tmp_path) == [["b", "-"], "join"]


def test_an_empty_list_skips_the_task_and_a_bare_depends_lets_the_next_run(tmp_path):
    result = go(tmp_path, spec("[]"))
    assert result.phase == "Succeeded"
    assert result.tasks["work"].phase == "Skipped" and result.tasks["work"].message == "Skipped, empty params"
    assert logged(tmp_path) == ["join"]


def test_a_value_that_is_not_a_json_list_is_a_node_error(tmp_path):
    result = go(tmp_path, spec('{"not": "a list"}'))
    assert result.phase == "Error" and "withParam value is not a JSON list" in result.tasks["work"].message


def test_both_loops_on_one_task_are_refused(tmp_path):
    doc = spec("[]", loop={"withParam": "{{tasks.plan.outputs.parameters.items}}", "withItems": [1]})
    with pytest.raises(SpecError, match="either withParam or withItems"):
        go(tmp_path, doc)


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: t.pop("withParam"), "{{item}} outside a loop"),
    (lambda t: t.update(withParam="plan.outputs"), "must be one {{...}} expression"),
    (lambda t: t.update(withParam="{{tasks.nope.outputs.parameters.items}}"), "names unknown task 'nope'"),
    (lambda t: t.update(withParam="{{tasks.plan.outputs.parameters.other}}"), "declares no output"),
    (lambda t: t.update(withItems="abc"), "withParam or withItems, not both"),
])
def test_semantic_checks_catch_a_broken_loop(mutate, expected):
    doc = spec("[]")
    assert semantic_errors(doc) == []
    mutate(doc["spec"]["templates"][3]["dag"]["tasks"][1])
    assert any(expected in e for e in semantic_errors(doc)), semantic_errors(doc)
