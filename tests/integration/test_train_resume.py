"""A killed `sentimentops train` resumes from its last checkpoint and ends exactly where an uninterrupted run does.

Regression (issue 11): the checkpoints lived in the step's outputs folder, which the local runner empties before
re-running a step, so a killed train restarted from step 0 although the README says it resumes. They now live
under the state folder, keyed by dataset and settings (steps/train/cli.py), and this test re-runs with a FRESH
outputs folder, the way the runner does.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest

from sentimentops.steps.core.manifests import read_manifest, write_manifest
from sentimentops.steps.core.processes import ProcessGroups, wait_for

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("sentimentops"))
# 200 rows, batch 8: 25 steps an epoch, 75 in all, a checkpoint every 5 (about 90 ms a step on the 2 shared cores,
# so the run is still going when the first checkpoint's log line is seen and the process group is killed). Most of
# a run's ~70 s is start-up (torch, transformers, MLflow): the reference runs beside the killed and resumed runs.
SETTINGS = {"epochs": "3", "batch-size": "8", "learning-rate": "1e-3", "max-length": "64", "seed": "42",
            "checkpoint-every": "5"}


@pytest.fixture()
def procs():
    with ProcessGroups(grace_s=5) as groups:  # every process a test starts ends with it
        yield groups


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, imdb_dir) -> tuple[Path, Path]:
    """(dataset folder, version folder) as the ingest and version steps would leave them, small."""
    root = tmp_path_factory.mktemp("resume-inputs")
    rows = pd.read_parquet(imdb_dir / "sample_train.parquet")[["text", "label"]]
    dataset, version = root / "dataset", root / "version"
    dataset.mkdir()
    rows.iloc[:200].to_parquet(dataset / "train.parquet")
    rows.iloc[200:260].to_parquet(dataset / "validation.parquet")
    write_manifest(version, "version", refs={"dvc_md5": "test-resume"})
    return dataset, version


def start(procs: ProcessGroups, inputs, model: Path, home: Path, out: Path, log: Path):
    dataset, version = inputs
    argv = [CLI, "train", "--dataset", str(dataset), "--version", str(version), "--out", str(out),
            "--base-model", str(model), "--checkpoint-dir", str(home / "checkpoints")]
    for key, value in SETTINGS.items():
        argv += [f"--{key}", value]
    env = {**os.environ, "SENTIMENTOPS_HOME": str(home), "SENTIMENTOPS_PROFILE": "local",
           "SENTIMENTOPS_LOG_FORMAT": "json"}
    return procs.start(argv, log=log, env=env)


def messages(log: Path) -> list[str]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            found.append(json.loads(line)["message"])
        except (ValueError, KeyError, TypeError):
            continue
    return found


def steps_in(log: Path, pattern: str) -> list[int]:
    return [int(m.group(1)) for text in messages(log) if (m := re.search(pattern, text))]


def finish(proc, timeout_s: float = 240) -> None:
    wait_for(lambda: proc.poll() is not None, timeout_s, f"{proc.args[1]} to finish")
    assert proc.returncode == 0, proc.log.read_text()[-3000:]


def test_a_killed_train_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
        tmp_path, procs, inputs, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    # the reference: one uninterrupted run (in its own state folder), alongside the others
    ref = start(procs, inputs, tiny_model_dir, tmp_path / "home-ref", tmp_path / "ref", tmp_path / "ref.log")

    # the same run killed (SIGKILL to its process group) once a checkpoint past step 0 is on disk
    home = tmp_path / "home"
    killed = start(procs, inputs, tiny_model_dir, home, tmp_path / "killed", tmp_path / "killed.log")
    wait_for(lambda: steps_in(killed.log, r"checkpoint at step (\d+)"), 180, "a checkpoint past step 0",
             procs=[killed], poll_s=0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    saved = steps_in(killed.log, r"checkpoint at step (\d+)")
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "killed" / "model").exists(), \
        f"the run ended before it could be killed (checkpoints at {saved}): make it longer"

    # re-run with a fresh outputs folder, as the local runner does
    resumed = start(procs, inputs, tiny_model_dir, home, tmp_path / "resumed", tmp_path / "resumed.log")
    finish(ref)
    expected = read_manifest(tmp_path / "ref").metrics
    assert expected["steps"] == 75 and expected["resumed_from_step"] == 0
    assert not any((tmp_path / "home-ref" / "checkpoints").iterdir())  # deleted once the model was saved
    finish(resumed)
    (resumed_from,) = steps_in(resumed.log, r"resumed from step (\d+)")
    assert 0 < resumed_from < 75 and resumed_from >= max(saved) and resumed_from % 5 == 0
    got = read_manifest(tmp_path / "resumed").metrics
    assert got["resumed_from_step"] == resumed_from and got["steps"] == 75
    # deterministic on CPU (one thread, RNG restored): the same numbers, not merely close ones
    assert got["final_loss"] == expected["final_loss"]
    assert got["val_accuracy"] == expected["val_accuracy"]
    want, have = load_file(tmp_path / "ref" / "model" / "model.safetensors"), \
        load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert all(torch.equal(want[k], have[k]) for k in want)
    assert not any((home / "checkpoints").iterdir())
