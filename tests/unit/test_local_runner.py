"""The local runner on small synthetic Argo specs whose tasks are `python -c` one-liners (fast, offline).

Every task appends its name to $ORDER_LOG (passed with --env), so a test can see what ran and in which order.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from sentimentops.workflows import cli
from sentimentops.workflows.argo.spec import SpecError
from sentimentops.workflows.runner.local_runner import run

# Writes the parameter into the output folder, a `promoted` file for the output parameter, and its argv.
PRODUCE = r"""
import json, os, pathlib, sys
out = pathlib.Path(sys.argv[sys.argv.index('--out') + 1]); out.mkdir(parents=True)
(out / 'value.txt').write_text(sys.argv[sys.argv.index('--word') + 1])
(out / 'promoted').write_text(os.environ['PROMOTE'] + '\n')
(out / 'argv.json').write_text(json.dumps(sys.argv[1:]))
open(os.environ['ORDER_LOG'], 'a').write(os.environ['TASK'] + '\n')
"""
# Reads the upstream folder and writes its value upper-cased.
CONSUME = r"""
import os, pathlib, sys
src, out = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[4]); out.mkdir(parents=True)
(out / 'value.txt').write_text((src / 'value.txt').read_text().upper())
open(os.environ['ORDER_LOG'], 'a').write(os.environ['TASK'] + '\n')
"""
MARK = r"""
import os, sys
open(os.environ['ORDER_LOG'], 'a').write(sys.argv[1] + '\n')
"""
FAIL = r"""
import os, sys
open(os.environ['ORDER_LOG'], 'a').write(os.environ['TASK'] + '\n')
print('dataset failed its expectations', file=sys.stderr); sys.exit(3)
"""
PROGRESS = r"""
import os, sys
sys.stderr.write('epoch 1\n 10%\r 50%\r100%\n'); sys.stderr.flush()
open(os.environ['ORDER_LOG'], 'a').write(os.environ['TASK'] + '\n')
"""


def container(name: str, code: str, args: list[str] | None = None, inputs: dict | None = None,
              outputs: dict | None = None) -> dict:
    return {
        "name": name,
        "container": {
            "image": "python:3.11",
            "command": ["python", "-c", code],
            "args": args or [],
            "env": [
                {"name": "TASK", "value": name},
                {"name": "PROMOTE", "value": "{{workflow.parameters.promote}}"},
                {"name": "WF_NAME", "value": "{{workflow.name}}"},
            ],
        },
        "inputs": inputs or {},
        "outputs": outputs or {},
        "retryStrategy": {"limit": "1"},
    }


def make_spec(tasks: list[dict], extra_templates: list[dict] | None = None) -> dict:
    templates = [
        container("produce", PRODUCE,
                  ["--word", "{{inputs.parameters.word}}", "--out", "{{outputs.artifacts.data.path}}"],
                  inputs={"parameters": [{"name": "word"}]},
                  outputs={"artifacts": [{"name": "data", "path": "/tmp/out/data"}],
                           "parameters": [{"name": "promoted", "valueFrom": {"path": "/tmp/out/data/promoted"}}]}),
        container("consume", CONSUME,
                  ["--in", "{{inputs.artifacts.data.path}}", "--out", "{{outputs.artifacts.upper.path}}"],
                  inputs={"artifacts": [{"name": "data", "path": "/tmp/in/data"}]},
                  outputs={"artifacts": [{"name": "upper", "path": "/tmp/out/upper"}]}),
        container("mark", MARK, ["{{inputs.parameters.who}}"],
                  inputs={"parameters": [{"name": "who", "value": "mark"}]}),
        container("fail", FAIL),
        container("progress", PROGRESS),
        *(extra_templates or []),
        {"name": "main", "dag": {"tasks": tasks}},
    ]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "synthetic"},
        "spec": {
            "entrypoint": "main",
            "arguments": {"parameters": [
                {"name": "word", "value": "hello", "description": "the word"},
                {"name": "promote", "value": "true", "description": "what produce writes to promoted",
                 "enum": ["true", "false"]},
            ]},
            "templates": templates,
        },
    }


PRODUCE_TASK = {"name": "produce", "template": "produce",
                "arguments": {"parameters": [{"name": "word", "value": "{{workflow.parameters.word}}"}]}}
CONSUME_TASK = {"name": "consume", "template": "consume", "depends": "produce",
                "arguments": {"artifacts": [{"name": "data", "from": "{{tasks.produce.outputs.artifacts.data}}"}]}}


def mark(name: str, **fields) -> dict:
    """A task that only logs its own name (passed as the `who` parameter)."""
    return {"name": name, "template": "mark", "arguments": {"parameters": [{"name": "who", "value": name}]},
            **fields}


def write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def order(tmp_path: Path) -> list[str]:
    log = tmp_path / "order.log"
    return log.read_text().split() if log.exists() else []


def go(tmp_path: Path, spec: dict, **kwargs):
    kwargs.setdefault("env", {"ORDER_LOG": str(tmp_path / "order.log")})
    return run(write(tmp_path, spec), tmp_path / "run", out=io.StringIO(), **kwargs)


def test_tasks_run_in_dependency_order_not_declaration_order(tmp_path):
    last = mark("last", dependencies=["consume", "produce"])
    result = go(tmp_path, make_spec([last, CONSUME_TASK, PRODUCE_TASK]))
    assert result.phase == "Succeeded" and result.exit_code == 0
    assert order(tmp_path) == ["produce", "consume", "last"]


def test_parameters_and_artifacts_are_substituted(tmp_path):
    result = go(tmp_path, make_spec([PRODUCE_TASK, CONSUME_TASK]), parameters={"word": "bonjour"})
    run_dir = tmp_path / "run"
    assert (run_dir / "consume/outputs/upper/value.txt").read_text() == "BONJOUR"
    # The consumer's input path is the producer's output folder, not a copy.
    assert result.tasks["consume"].argv[3:] == ["--in", str(run_dir / "produce/outputs/data"),
                                                "--out", str(run_dir / "consume/outputs/upper")]


def test_recorded_argv_is_the_template_command_after_substitution(tmp_path):
    spec = make_spec([PRODUCE_TASK])
    result = go(tmp_path, spec)
    out_dir = tmp_path / "run/produce/outputs/data"
    tpl = spec["spec"]["templates"][0]["container"]
    expected = [*tpl["command"], *tpl["args"]]
    expected = [a.replace("{{inputs.parameters.word}}", "hello").replace("{{outputs.artifacts.data.path}}",
                                                                         str(out_dir)) for a in expected]
    assert result.tasks["produce"].argv == expected
    status = json.loads((tmp_path / "run/status.json").read_text())
    assert status["tasks"]["produce"]["argv"] == expected
    # ... and that is what the process received (`python -c CODE args`: sys.argv[1:] == args).
    assert json.loads((out_dir / "argv.json").read_text()) == expected[3:]


def test_output_parameter_is_read_from_its_value_from_path(tmp_path):
    result = go(tmp_path, make_spec([PRODUCE_TASK]), parameters={"promote": "false"})
    assert result.tasks["produce"].outputs == {"promoted": "false"}  # trailing newline trimmed, as Argo does
    status = json.loads((tmp_path / "run/status.json").read_text())
    assert status["tasks"]["produce"]["outputs"] == {"promoted": "false"}


@pytest.mark.parametrize("promote, ran, skipped", [("true", "deploy", "hold"), ("false", "hold", "deploy")])
def test_when_conditions_are_honoured(tmp_path, promote, ran, skipped):
    tasks = [
        PRODUCE_TASK,
        mark("deploy", depends="produce", when="{{tasks.produce.outputs.parameters.promoted}} == true"),
        mark("hold", depends="produce",
             when="'{{tasks.produce.outputs.parameters.promoted}}' != 'true' && {{workflow.parameters.word}} == hello"),
        mark("after", depends="deploy && hold"),
    ]
    result = go(tmp_path, make_spec(tasks), parameters={"promote": promote})
    assert result.phase == "Succeeded"
    assert result.tasks[ran].phase == "Succeeded"
    assert result.tasks[skipped].phase == "Skipped" and "when false" in result.tasks[skipped].message
    # A skipped dependency satisfies a plain `depends`, as in Argo.
    assert order(tmp_path) == ["produce", ran, "after"]


def test_failure_stops_dependents_and_names_the_task_and_log(tmp_path):
    tasks = [PRODUCE_TASK, {"name": "validate", "template": "fail", "depends": "produce"},
             mark("train", depends="validate"), mark("independent")]
    out = io.StringIO()
    result = run(write(tmp_path, make_spec(tasks)), tmp_path / "run", env={"ORDER_LOG": str(tmp_path / "order.log")},
                 out=out)
    assert result.phase == "Failed" and result.exit_code == 1 and result.failed_task == "validate"
    log = tmp_path / "run/validate/log.txt"
    assert "dataset failed its expectations" in log.read_text()
    assert "validate" in result.message and str(log) in result.message and "exit code 3" in result.message
    assert result.tasks["train"].phase == "Omitted"
    assert result.tasks["independent"].phase == "Omitted"  # failFast: nothing new starts after a failure
    assert order(tmp_path) == ["produce", "fail"]  # the order log holds template names for these two
    assert "[validate 0s] dataset failed its expectations" in out.getvalue()
    assert json.loads((tmp_path / "run/status.json").read_text())["phase"] == "Failed"


def test_missing_output_artifact_fails_the_task(tmp_path):
    tpl = container("lazy", "print('forgot to write the model')", outputs={"artifacts": [{"name": "model", "path": "/tmp/out/model"}]})
    result = go(tmp_path, make_spec([{"name": "lazy", "template": "lazy"}], [tpl]))
    assert result.tasks["lazy"].phase == "Failed" and "not written" in result.tasks["lazy"].message


def test_rerun_reuses_unchanged_steps_and_reruns_changed_ones(tmp_path):
    spec = make_spec([PRODUCE_TASK, CONSUME_TASK])
    assert go(tmp_path, spec).phase == "Succeeded"
    second = go(tmp_path, spec)
    assert {t.phase for t in second.tasks.values()} == {"Reused"}
    assert second.tasks["produce"].outputs == {"promoted": "true"}
    assert order(tmp_path) == ["produce", "consume"]  # nothing ran again
    third = go(tmp_path, spec, parameters={"word": "changed"})
    assert [third.tasks[n].phase for n in ("produce", "consume")] == ["Succeeded", "Succeeded"]
    assert (tmp_path / "run/consume/outputs/upper/value.txt").read_text() == "CHANGED"


def test_reuse_needs_the_outputs_to_exist(tmp_path):
    spec = make_spec([PRODUCE_TASK])
    go(tmp_path, spec)
    (tmp_path / "run/produce/outputs/data/value.txt").unlink()
    (tmp_path / "run/produce/outputs/data/promoted").unlink()
    (tmp_path / "run/produce/outputs/data/argv.json").unlink()
    (tmp_path / "run/produce/outputs/data").rmdir()
    assert go(tmp_path, spec).tasks["produce"].phase == "Succeeded"
    assert order(tmp_path) == ["produce", "produce"]


def test_stop_after_then_resume(tmp_path):
    spec = make_spec([PRODUCE_TASK, CONSUME_TASK])
    first = go(tmp_path, spec, stop_after="produce")
    assert first.phase == "Stopped" and first.exit_code == 0
    assert first.tasks["consume"].phase == "Pending"
    resumed = go(tmp_path, spec)
    assert [resumed.tasks[n].phase for n in ("produce", "consume")] == ["Reused", "Succeeded"]
    assert order(tmp_path) == ["produce", "consume"]


def test_env_is_substituted_and_overridable(tmp_path):
    code = ("import os, pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir();"
            "(out / 'env.txt').write_text(os.environ['WF_NAME'] + ' ' + os.environ['PROMOTE'] + ' '"
            " + os.environ['EXTRA'])")
    tpl = container("envy", code, ["{{outputs.artifacts.env.path}}"],
                    outputs={"artifacts": [{"name": "env", "path": "/tmp/out/env"}]})
    go(tmp_path, make_spec([{"name": "envy", "template": "envy"}], [tpl]),
       env={"EXTRA": "cli", "PROMOTE": "from-cli"}, workflow_name="synthetic-abc")
    assert (tmp_path / "run/envy/outputs/env/env.txt").read_text() == "synthetic-abc from-cli cli"


def test_progress_redraws_stay_visible_and_are_logged_raw(tmp_path):
    out = io.StringIO()
    result = run(write(tmp_path, make_spec([{"name": "train", "template": "progress"}])), tmp_path / "run",
                 env={"ORDER_LOG": str(tmp_path / "order.log")}, out=out)
    assert result.phase == "Succeeded"
    assert "\r[train 0s]  50%\r[train 0s] 100%\n" in out.getvalue()
    assert (tmp_path / "run/train/log.txt").read_bytes() == b"epoch 1\n 10%\r 50%\r100%\n"


def test_invalid_requests_fail_before_anything_runs(tmp_path):
    spec = make_spec([PRODUCE_TASK])
    with pytest.raises(SpecError, match="unknown parameter"):
        go(tmp_path, spec, parameters={"wrod": "x"})
    with pytest.raises(SpecError, match="not one of"):
        go(tmp_path, spec, parameters={"promote": "maybe"})
    with pytest.raises(SpecError, match="no such task"):
        go(tmp_path, spec, stop_after="nope")
    cyclic = make_spec([mark("a", depends="b"), mark("b", depends="a")])
    with pytest.raises(SpecError, match="cycle"):
        go(tmp_path, cyclic)
    assert order(tmp_path) == []


def test_bad_when_fails_the_task_with_a_clear_error(tmp_path):
    tasks = [mark("odd", when="{{workflow.parameters.word}} + 1 == 2")]
    result = go(tmp_path, make_spec(tasks))
    # Argo marks a node it cannot evaluate Error (not Failed: nothing ran); the run fails with that status.
    assert result.phase == "Error" and result.exit_code == 1 and result.failed_task == "odd"
    assert result.tasks["odd"].phase == "Error" and "unsupported syntax" in result.tasks["odd"].message


def test_cli_run_passes_parameters_and_returns_the_exit_code(tmp_path, caplog):
    path = write(tmp_path, make_spec([PRODUCE_TASK, CONSUME_TASK]))
    argv = ["pipeline", "run", "--template", str(path), "--run-dir", str(tmp_path / "run"), "-p", "word=cli",
            "--env", f"ORDER_LOG={tmp_path / 'order.log'}"]
    assert cli.main(argv) == 0
    assert (tmp_path / "run/consume/outputs/upper/value.txt").read_text() == "CLI"
    assert cli.main(["run", "--template", str(path), "--run-dir", str(tmp_path / "run"), "-p", "nope=1"]) == 2
    # logged (stderr), not printed: stdout is for a command's result
    assert any(r.levelname == "ERROR" and "unknown parameter" in r.getMessage() for r in caplog.records)


def test_sentimentops_resolves_next_to_the_interpreter_first():
    from sentimentops.workflows.runner.process import resolve_executable

    assert resolve_executable("python") == str(Path(sys.executable).parent / "python")


# --- Reuse: the fingerprint covers settings (profile + SENTIMENTOPS_* env), dependencies and code --------------------

# A stand-in for the `sentimentops` CLI: `sentimentops STAGE [--in DIR] --out DIR`, so the runner sees a stage
# command (the section of the profile it reads is STAGE) without starting the real stages.
FAKE_CLI = r"""#!{python}
import os, pathlib, sys
stage, args = sys.argv[1], sys.argv[2:]
out = pathlib.Path(args[args.index('--out') + 1]); out.mkdir(parents=True)
before = pathlib.Path(args[args.index('--in') + 1], 'value.txt').read_text() if '--in' in args else ''
(out / 'value.txt').write_text(before + stage)
open(os.environ['ORDER_LOG'], 'a').write(stage + '\n')
"""


def stage_spec(tmp_path: Path) -> dict:
    """ingest -> register (an artifact between them) -> announce (a plain command; `depends` only, no artifact)."""
    cli_path = tmp_path / "bin" / "sentimentops"
    cli_path.parent.mkdir(exist_ok=True)
    cli_path.write_text(FAKE_CLI.replace("{python}", sys.executable))
    cli_path.chmod(0o755)

    def stage(name: str, args: list[str], inputs: dict | None = None) -> dict:
        tpl = container(name, "", [name, *args, "--out", "{{outputs.artifacts.out.path}}"], inputs=inputs,
                        outputs={"artifacts": [{"name": "out", "path": "/tmp/out/out"}]})
        tpl["container"]["command"] = [str(cli_path)]
        return tpl

    templates = [stage("ingest", []),
                 stage("register", ["--in", "{{inputs.artifacts.data.path}}"],
                       inputs={"artifacts": [{"name": "data", "path": "/tmp/in/data"}]})]
    tasks = [{"name": "ingest", "template": "ingest"},
             {"name": "register", "template": "register", "depends": "ingest",
              "arguments": {"artifacts": [{"name": "data", "from": "{{tasks.ingest.outputs.artifacts.out}}"}]}},
             mark("announce", depends="register")]
    return make_spec(tasks, templates)


@pytest.fixture
def profile(tmp_path):
    """A copy of the local profile, selected by path through SENTIMENTOPS_PROFILE; edit(section, key, value)."""
    from sentimentops.steps.core.config import load_profile

    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(load_profile("local")))

    def edit(section: str, key: str, value) -> None:
        content = yaml.safe_load(path.read_text())
        content[section][key] = value
        path.write_text(yaml.safe_dump(content))

    edit.path = path
    return edit


def stages(tmp_path: Path, profile, **env) -> dict:
    result = go(tmp_path, stage_spec(tmp_path),
                env={"ORDER_LOG": str(tmp_path / "order.log"), "SENTIMENTOPS_PROFILE": str(profile.path), **env})
    assert result.phase == "Succeeded", result.message
    return {name: (rec.phase, rec.decision) for name, rec in result.tasks.items()}


def phases(tasks: dict) -> list[str]:
    return [tasks[name][0] for name in ("ingest", "register", "announce")]


def test_unchanged_steps_are_reused_and_say_why(tmp_path, profile):
    first = stages(tmp_path, profile)
    assert phases(first) == ["Succeeded"] * 3
    assert first["ingest"][1] == "run (not run before in this folder)"
    again = stages(tmp_path, profile)
    assert phases(again) == ["Reused"] * 3
    assert again["register"][1] == "reused (fingerprint unchanged)"
    assert order(tmp_path) == ["ingest", "register", "announce"]
    parts = json.loads((tmp_path / "run/status.json").read_text())["tasks"]["register"]["fingerprint_parts"]
    assert {"args", "input.data", "upstream.ingest", "settings.register.baseline_accuracy",
            "settings.common.home", "env.SENTIMENTOPS_PROFILE", "code.source"} <= set(parts)
    assert "settings.ingest.fallback_sources" not in parts  # another stage's section


def test_a_stage_section_edit_reruns_that_stage_and_what_follows_it(tmp_path, profile):
    stages(tmp_path, profile)
    profile("register", "baseline_accuracy", 0.99)
    tasks = stages(tmp_path, profile)
    assert phases(tasks) == ["Reused", "Succeeded", "Succeeded"]
    assert tasks["register"][1] == "re-run (settings changed: register.baseline_accuracy)"
    # No artifact links announce to register: it re-runs because register ran again (a rollout after register).
    assert tasks["announce"][1] == "re-run (upstream re-ran: register)"
    log = (tmp_path / "run/runner.log").read_text()
    assert "register     Running  re-run (settings changed: register.baseline_accuracy)" in log
    assert phases(stages(tmp_path, profile)) == ["Reused"] * 3


def test_a_common_section_edit_reruns_every_step(tmp_path, profile):
    stages(tmp_path, profile)
    profile("common", "experiment", "another-experiment")
    tasks = stages(tmp_path, profile)
    assert phases(tasks) == ["Succeeded"] * 3
    assert tasks["ingest"][1] == "re-run (settings changed: common.experiment)"
    # ingest wrote the same bytes again, so only the dependency and the common setting differ for register
    assert tasks["register"][1] == "re-run (upstream re-ran: ingest; settings changed: common.experiment)"


def test_a_settings_variable_in_the_runner_env_counts_and_log_settings_do_not(tmp_path, profile, monkeypatch):
    stages(tmp_path, profile)
    monkeypatch.setenv("SENTIMENTOPS_LOG_FORMAT", "json")  # changes no result
    monkeypatch.setenv("SENTIMENTOPS_SERVE_PORT", "9000")  # a section no task here reads
    assert phases(stages(tmp_path, profile)) == ["Reused"] * 3
    monkeypatch.setenv("SENTIMENTOPS_REGISTER_BASELINE_ACCURACY", "0.5")
    tasks = stages(tmp_path, profile)
    assert phases(tasks) == ["Reused", "Succeeded", "Succeeded"]
    assert tasks["register"][1] == "re-run (env changed: SENTIMENTOPS_REGISTER_BASELINE_ACCURACY)"


def test_a_code_change_reruns_every_step(tmp_path, profile, monkeypatch):
    from sentimentops.workflows.runner import fingerprint

    stages(tmp_path, profile)
    monkeypatch.setattr(fingerprint, "code_parts", lambda: {"code.source": "0" * 16})
    tasks = stages(tmp_path, profile)
    assert phases(tasks) == ["Succeeded"] * 3
    assert tasks["ingest"][1] == "re-run (code changed)"


def test_source_hash_covers_code_and_data_not_profiles_rendered_specs_or_caches(tmp_path):
    from sentimentops.workflows.runner.fingerprint import source_hash

    files = {"steps/train.py": "x = 1", "steps/demo/reviews.jsonl": "{}", "steps/profiles/local.yaml": "a: 1",
             "steps/__pycache__/train.cpython-311.pyc": "b", "charts/sentimentops/files/workflows/wf.yaml": "kind: W",
             "workflows/runner/run.py": "y = 2"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    roots = (tmp_path / "steps", tmp_path / "workflows")
    before = source_hash(roots)
    for rel in ("steps/profiles/local.yaml", "steps/__pycache__/train.cpython-311.pyc", "charts/sentimentops/files/workflows/wf.yaml"):
        (tmp_path / rel).write_text("edited")
        assert source_hash(roots) == before, rel
    for rel in ("steps/train.py", "steps/demo/reviews.jsonl", "workflows/runner/run.py"):
        (tmp_path / rel).write_text("edited")
        assert source_hash(roots) != before, rel
        before = source_hash(roots)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, expected", [(_Terminal, "text"), (io.StringIO, "unset")])
def test_steps_log_plain_lines_when_a_person_watches_the_runner(tmp_path, monkeypatch, stream, expected):
    """A step's output is a pipe, so it would log JSON lines (its pod format, steps/core/logs.py); when the runner
    itself writes to a terminal, the steps get SENTIMENTOPS_LOG_FORMAT=text. A set value is left alone."""
    monkeypatch.delenv("SENTIMENTOPS_LOG_FORMAT", raising=False)
    code = "import os; print('format=' + os.environ.get('SENTIMENTOPS_LOG_FORMAT', 'unset'))"
    spec = make_spec([{"name": "show", "template": "show"}], extra_templates=[container("show", code)])
    result = run(write(tmp_path, spec), tmp_path / "run", out=stream())
    assert result.phase == "Succeeded"
    assert f"format={expected}" in (tmp_path / "run/show/log.txt").read_text()
