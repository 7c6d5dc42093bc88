"""The data stages' command lines, generated from their settings (steps/core/config.py `parse_settings`), and their
exit statuses (the stage exit table, steps/core/errors.py): --help lists every setting with its description; a bad
flag value, setting or profile key exits 2 naming it; a missing input exits 1 in one line, without a traceback.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sentimentops.steps import cli
from sentimentops.steps.core.config import CommonSettings
from sentimentops.steps.ingest import IngestSettings
from sentimentops.steps.ingest import main as ingest_main
from sentimentops.steps.validate.checks import ValidateSettings
from sentimentops.steps.validate.cli import main as validate_main
from sentimentops.steps.version import VersionSettings
from sentimentops.steps.version import main as version_main

# stage -> (main, settings class, the folder arguments a run needs, given a temporary folder)
STAGES = {
    "ingest": (ingest_main, IngestSettings, lambda tmp: ["--source", str(tmp / "missing"), "--out", str(tmp / "o")]),
    "validate": (validate_main, ValidateSettings,
                 lambda tmp: ["--dataset", str(tmp / "missing"), "--out", str(tmp / "o")]),
    "version": (version_main, VersionSettings, lambda tmp: ["--dataset", str(tmp / "missing"), "--out", str(tmp / "o")]),
}
# Flags the rendered Argo template (charts/sentimentops/files/workflows/sentiment-training.yaml) passes to each data stage.
RENDERED_FLAGS = {
    "ingest": ["--source", "--sample-size", "--test-size", "--val-fraction", "--seed", "--out"],
    "validate": ["--dataset", "--out"],
    "version": ["--dataset", "--out"],
}
# A bad value the flag's type accepts but the settings reject (a pydantic bound or validator).
BAD_VALUES = {
    "ingest": ["--sample-size", "-5"],
    "validate": ["--label-mean-min", "0.9", "--label-mean-max", "0.6"],
    "version": ["--profile", "no-such-profile"],
}
# A typo of a real key in the stage's own profile section.
TYPOS = {"ingest": "sample_sise", "validate": "min_row", "version": "remot"}


def _squashed(text: str) -> str:
    """Text without whitespace: argparse wraps help at any space (and after a hyphen)."""
    return "".join(text.split())


def _errors(caplog) -> list:
    return [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_lists_every_setting_with_its_description(stage, capsys):
    main, settings_cls, _ = STAGES[stage]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: sentimentops {stage}")
    for flag in RENDERED_FLAGS[stage]:
        assert flag in text
    for name, info in settings_cls.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, name
        if name not in CommonSettings.model_fields:
            assert _squashed(info.description or "").rstrip(".")[:40] in _squashed(text), name


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_flag_of_the_wrong_type_exits_2(stage, home, tmp_path, capsys):
    main, _, folders = STAGES[stage]
    bad = {"ingest": ["--seed", "forty-two"], "validate": ["--min-rows", "many"], "version": ["--no-such-flag"]}
    with pytest.raises(SystemExit) as exit_info:  # argparse's own exit: 2, with the usage line
        main([*folders(tmp_path), *bad[stage]])
    assert exit_info.value.code == 2
    assert "usage: sentimentops" in capsys.readouterr().err


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_value_the_settings_reject_exits_2(stage, home, tmp_path, caplog):
    main, _, folders = STAGES[stage]
    assert main([*folders(tmp_path), *BAD_VALUES[stage]]) == 2
    (error,) = _errors(caplog)
    assert error.exc_info is None
    assert BAD_VALUES[stage][0].lstrip("-").replace("-", "_") in error.getMessage() or \
        "no-such-profile" in error.getMessage()


@pytest.mark.parametrize("how", ["flag", "environment"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_unknown_profile_key_exits_2_naming_the_key(stage, how, home, tmp_path, monkeypatch, caplog):
    main, settings_cls, folders = STAGES[stage]
    profile = tmp_path / "typo.yaml"
    profile.write_text(f"common:\n  home: {home}\n{settings_cls.section}:\n  {TYPOS[stage]}: 10\n")
    argv = folders(tmp_path)
    if how == "flag":
        argv += ["--profile", str(profile)]
    else:
        monkeypatch.setenv("SENTIMENTOPS_PROFILE", str(profile))
    assert main(argv) == 2
    (error,) = _errors(caplog)
    assert f"unknown key {settings_cls.section}.{TYPOS[stage]}" in error.getMessage()
    assert str(profile) in error.getMessage() and error.exc_info is None


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_missing_input_folder_exits_1_in_one_line(stage, home, tmp_path, caplog):
    main, _, folders = STAGES[stage]
    assert main(folders(tmp_path)) == 1
    (error,) = _errors(caplog)
    message = error.getMessage()
    assert message.startswith(f"{stage}: data error: ") and "missing" in message
    assert len(message.splitlines()) == 1 and error.exc_info is None
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_missing_input_through_the_console_script(home, tmp_path):
    # The real process: one line on stderr, no traceback, nothing on stdout (stdout is for results).
    done = subprocess.run([sys.executable, "-m", "sentimentops.steps.cli", "ingest", "--source",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
                          check=False, capture_output=True, text=True, timeout=120, env=_text_logs())
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no such file or folder" in done.stderr


def _text_logs() -> dict[str, str]:
    return {**os.environ, "SENTIMENTOPS_LOG_FORMAT": "text"}


def test_unknown_command_exits_2_through_the_table(caplog, capsys):
    assert cli.main(["no-such-stage"]) == 2
    (error,) = _errors(caplog)
    assert "unknown command 'no-such-stage'" in error.getMessage()
    assert "usage: sentimentops <command>" in capsys.readouterr().err
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "usage: sentimentops <command>" in capsys.readouterr().out


def test_stage_table_names_existing_modules():
    steps = Path(cli.__file__).parent
    for command, module in cli.STAGES.items():
        parts = module.split(".")[2:]
        assert steps.joinpath(*parts[:-1], parts[-1] + ".py").is_file(), command


# ---- the servers and sub-command lines (serve, drift, rollout): the same generated flags and exit table ----------

def _serve_main(argv):
    from sentimentops.steps.serve.server import main
    return main(argv)


def _drift_main(argv):
    from sentimentops.steps.drift.cli import main
    return main(argv)


def _rollout_main(argv):
    from sentimentops.steps.rollout.cli import main
    return main(argv)


def _settings_classes():
    from sentimentops.steps.drift.cli import DriftSettings
    from sentimentops.steps.rollout.cli import RolloutSettings
    from sentimentops.steps.serve.server import ServeSettings
    return {"serve": ServeSettings, "drift": DriftSettings, "rollout": RolloutSettings}


# command -> (main, argv for --help, the usage line, flags the chart / rendered templates / docs pass)
COMMANDS = {
    "serve": (_serve_main, ["--help"], "usage: sentimentops serve",
              ["--model-dir", "--model-uri", "--model-name", "--model-version", "--port", "--prediction-log",
               "--backend", "--host"]),
    "drift": (_drift_main, ["watch", "--help"], "usage: sentimentops drift watch",
              ["--records", "--model-dir", "--model-uri", "--reference", "--host", "--port", "--window",
               "--threshold", "--persist", "--webhook-url", "--webhook-token-file", "--from-end", "--max-windows"]),
    "rollout": (_rollout_main, ["run", "--help"], "usage: sentimentops rollout run",
                ["--target", "--model", "--canary-percent", "--inference-service",
                 "--soak", "--interval", "--prometheus-url", "--out", "--canary-env"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_server_help_lists_every_setting_with_its_description(command, capsys):
    main, argv, usage, used = COMMANDS[command]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(usage)
    for flag in used:
        assert flag in text, flag
    for name, info in _settings_classes()[command].model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, name
        assert info.description, f"{command}: setting {name} has no description"
        assert _squashed(info.description).rstrip(".")[:40] in _squashed(text), name


def test_rollout_top_level_help_points_at_the_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _rollout_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: sentimentops rollout") and "rollout <command> --help" in text


def test_drift_report_takes_its_settings_too(capsys):
    with pytest.raises(SystemExit):
        _drift_main(["report", "--help"])
    text = capsys.readouterr().out
    assert "--window" in text and "--threshold" in text and "--out" in text and "--webhook-url" not in text


# command -> argv with a value the flag's type accepts but the settings reject
BAD_SERVER_VALUES = {
    "serve": ["--model-dir", "unused", "--truncation", "cut"],
    "serve-port": ["--model-dir", "unused", "--port", "70000"],
    "drift-watch": ["watch", "--records", "r.jsonl", "--reference", "ref.json", "--window", "5"],
    "drift-report": ["report", "--records", "r.jsonl", "--reference", "ref.json", "--out", "o",
                     "--threshold", "0"],
    "rollout": ["status", "--canary-percent", "150"],
    "rollout-profile": ["status", "--profile", "no-such-profile"],
}


@pytest.mark.parametrize("case", sorted(BAD_SERVER_VALUES))
def test_server_bad_setting_exits_2_in_one_line(case, home, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    main = {"serve": _serve_main, "drift": _drift_main, "rollout": _rollout_main}[case.split("-")[0]]
    assert main(BAD_SERVER_VALUES[case]) == 2
    (error,) = _errors(caplog)
    message = error.getMessage()
    assert error.exc_info is None and len(message.splitlines()) == 1
    assert "usage error" in message or "invalid settings" in message
    assert not (tmp_path / "o").exists()


def test_server_bad_setting_through_the_console_script(home, tmp_path):
    # The real process, as the InferenceService starts it: exit 2, one line on stderr, nothing on stdout.
    done = subprocess.run([sys.executable, "-m", "sentimentops.steps.cli", "serve", "--model-dir", str(tmp_path),
                           "--truncation", "cut"], check=False, capture_output=True, text=True, timeout=120,
                          env=_text_logs())
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "truncation" in done.stderr


def test_server_flag_of_the_wrong_type_exits_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _drift_main(["watch", "--records", "r", "--reference", "x", "--port", "http"])
    assert exit_info.value.code == 2
    assert "usage: sentimentops drift watch" in capsys.readouterr().err


def test_drift_missing_reference_exits_1(home, tmp_path, caplog):
    assert _drift_main(["watch", "--records", str(tmp_path / "r.jsonl"), "--reference",
                        str(tmp_path / "missing.json"), "--port", "0"]) == 1
    (error,) = _errors(caplog)
    assert "data error" in error.getMessage() and error.exc_info is None


def test_predict_bad_input_exits_2(caplog):
    from sentimentops.steps.core.client import main as predict_main

    assert predict_main(["   ", "--url", "http://127.0.0.1:9"]) == 2
    assert predict_main(["fine", "--wait", "-1"]) == 2
    assert all(r.exc_info is None for r in _errors(caplog))
