"""version: a real DVC project with a local remote; identical data changes nothing; the snapshot comes back."""
from __future__ import annotations

import shutil

import pandas as pd
import yaml

from sentimentops.steps.core.config import load_settings
from sentimentops.steps.core.manifests import hash_dir, read_manifest
from sentimentops.steps.version import VersionSettings, open_workspace, snapshot
from sentimentops.steps.version import main as version_main


def write_dataset(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        pd.DataFrame({"text": [t if split == "train" else f"{split}: {t}" for t in texts],
                      "label": [i % 2 for i in range(len(texts))]}).to_parquet(
            folder / f"{split}.parquet", index=False)
    return folder


def remote_files(home):
    return sorted(p.relative_to(home) for p in (home / "dvc-remote").rglob("*") if p.is_file())


def test_snapshot_push_rerun_and_pull(home, tmp_path):
    dataset = write_dataset(tmp_path / "ds", ["good film", "bad film"])
    out = tmp_path / "out"
    assert version_main(["--dataset", str(dataset), "--out", str(out)]) == 0
    first = read_manifest(out)
    assert first.refs["dvc_md5"].endswith(".dir") and first.refs["dvc_pushed"] == "4"  # 3 files + the .dir
    assert yaml.safe_load((out / "dataset.dvc").read_text())["outs"][0]["md5"] == first.refs["dvc_md5"]
    before = remote_files(home)

    assert version_main(["--dataset", str(dataset), "--out", str(out)]) == 0
    again = read_manifest(out)
    assert again.refs["dvc_md5"] == first.refs["dvc_md5"] and again.refs["dvc_pushed"] == "0"
    assert remote_files(home) == before  # re-running on identical data changes nothing

    # Lose the workspace and its cache: the remote alone brings the snapshot back.
    settings = load_settings(VersionSettings)
    shutil.rmtree(settings.workspace)
    repo = open_workspace(settings.workspace, settings.remote)
    shutil.copy2(out / "dataset.dvc", settings.workspace / "dataset.dvc")
    repo.pull()
    restored = pd.read_parquet(settings.workspace / "dataset" / "train.parquet")
    assert restored["text"].tolist() == ["good film", "bad film"]


def test_changed_data_gets_a_new_hash(home, tmp_path):
    settings = load_settings(VersionSettings)
    a = snapshot(write_dataset(tmp_path / "a", ["one", "two"]), settings)
    b = snapshot(write_dataset(tmp_path / "b", ["one", "three"]), settings)
    assert a["dvc_md5"] != b["dvc_md5"]


# A data error (steps/core/errors.py): exit 1 (it was 2 before the stage exit table).
def test_empty_or_missing_folder_is_refused(home, tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert version_main(["--dataset", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "no parquet files" in caplog.text
    assert version_main(["--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in caplog.text and not (tmp_path / "o").exists()


def test_a_workspace_inside_the_checkout_and_a_pull_from_the_root(tmp_path, monkeypatch):
    """`make run`'s layout: home `.sentimentops` under a git checkout holding the committed .dvc/config. The version
    step's own workspace (no git) is not disturbed by the DVC project around it, and `dvc pull` at the root, through
    the committed remote `local`, restores what the step pushed."""
    import subprocess

    from dvc.repo import Repo

    from sentimentops.steps.core.snapshots import CHECKOUT_CONFIG

    root = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text(".sentimentops/\n")
    (root / ".dvc").mkdir()
    shutil.copy2(CHECKOUT_CONFIG, root / ".dvc" / "config")
    monkeypatch.chdir(root)
    monkeypatch.delenv("SENTIMENTOPS_HOME", raising=False)  # the default home, relative to the cwd
    monkeypatch.setenv("SENTIMENTOPS_PROFILE", "local")
    dataset = write_dataset(tmp_path / "ds", ["good film", "bad film"])
    assert version_main(["--dataset", str(dataset), "--out", str(tmp_path / "out")]) == 0
    assert (root / ".sentimentops" / "dvc-workspace" / "dataset.dvc").is_file()
    shutil.copy2(tmp_path / "out" / "dataset.dvc", root / "dataset.dvc")
    Repo(str(root)).pull()  # the committed default remote: ../.sentimentops/dvc-remote from .dvc/
    restored = pd.read_parquet(root / "dataset" / "train.parquet")
    assert restored["text"].tolist() == ["good film", "bad film"]


def test_the_production_slice_is_part_of_the_snapshot(home, tmp_path):
    """issue 15: ingest's merged output (a provenance column, production.parquet beside the splits) is versioned
    whole, and the slice comes back from the remote."""
    dataset = write_dataset(tmp_path / "ds", ["good film", "bad film"])
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(dataset / f"{split}.parquet")
        frame.assign(provenance="base").to_parquet(dataset / f"{split}.parquet", index=False)
    pd.DataFrame({"text": ["a captured review"], "label": [1], "provenance": ["feedback"]}).to_parquet(
        dataset / "production.parquet", index=False)
    (dataset / "manifest.json").write_text("{}\n")  # volatile: never part of the snapshot
    out = tmp_path / "out"
    assert version_main(["--dataset", str(dataset), "--out", str(out)]) == 0
    assert read_manifest(out).refs["dvc_files"] == "4"
    settings = load_settings(VersionSettings)
    shutil.rmtree(settings.workspace)
    repo = open_workspace(settings.workspace, settings.remote)
    shutil.copy2(out / "dataset.dvc", settings.workspace / "dataset.dvc")
    repo.pull()
    restored = pd.read_parquet(settings.workspace / "dataset" / "production.parquet")
    assert restored["text"].tolist() == ["a captured review"] and restored["provenance"].tolist() == ["feedback"]
    assert hash_dir(settings.workspace / "dataset") == hash_dir(dataset)  # what train recorded comes back
