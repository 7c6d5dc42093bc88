"""`sentimentops data pull`: restore the exact dataset a registered model version was trained on.

The version's run holds the version step's `.dvc` pointer as the artifact `dataset/dataset.dvc` (train logs it) and
names the DVC remote (the version's `dataset.dvc_remote` tag, the run's dataset input). The pointer is fetched and
checked out into a fresh workspace from that remote, the restored folder's md5 is recomputed and compared with the
version's `dataset.dvc_md5` tag, and the parquet splits are copied to --out (a new or empty folder, or one a
previous restore made: it holds the restore's record, which this restore replaces with its files).

    sentimentops data pull --model-version 1 --out .sentimentops/restored
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import DataError, UsageError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.core.manifests import RESTORE_RECORD, hash_dir
from sentimentops.steps.core.snapshots import folder_md5, require_dvc, restore
from sentimentops.steps.core.tracking import configure
from sentimentops.steps.lineage.cli import add_version_flags, chosen_version
from sentimentops.steps.lineage.gather import find_version, gather

log = get_logger(__name__)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["pull"], help="pull: restore a version's dataset")
    add_version_flags(parser)
    parser.add_argument("--out", type=Path, help="Folder for the restored <split>.parquet files (default "
                        "{home}/restored/<model>-v<version>): new, empty, or a previous restore's (replaced).")
    parser.add_argument("--remote", help="The DVC remote to read from, when it moved since the version was "
                        "trained (default: the remote the version recorded).")


def check_out_folder(out: Path) -> list[Path]:
    """The files of a previous restore in `out` (to replace), or none for a new or empty folder; any other non-empty
    folder is a UsageError: a restore never deletes files it did not write."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    record = out / RESTORE_RECORD
    if record.is_file():
        try:
            files = [out / name for name in json.loads(record.read_text())["files"]]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UsageError(f"--out {out}: its {RESTORE_RECORD} is not a restore record ({err})") from err
        return [f for f in files if f.parent == out] + [record]
    if any(out.iterdir()):
        raise UsageError(f"--out {out} is a folder with other files in it (no {RESTORE_RECORD} of a previous "
                         "restore): give a new or empty folder")
    return []


def pull(client, model_version, out: Path, remote: str | None) -> dict:
    """Restores the dataset of a registry version (as find_version returns it) into `out`; returns what was
    restored (a JSON-able summary, also written to `out` as its RESTORE_RECORD)."""
    require_dvc()
    previous = check_out_folder(out)
    lineage = gather(client, model_version)
    name = lineage.registered_model
    data = lineage.dataset
    if not data.pointer:
        raise DataError(f"{name} v{lineage.version}: run {lineage.run_id} holds no dataset pointer (a run trained "
                        "before train logged dataset/dataset.dvc): nothing to restore from")
    remote = remote or data.remote
    if not remote:
        raise UsageError(f"{name} v{lineage.version} names no DVC remote: give --remote")
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="sentimentops-pull-") as tmp:
        try:
            pointer = Path(client.download_artifacts(lineage.run_id, data.pointer, tmp))
        except (MlflowException, OSError) as err:
            raise DataError(f"run {lineage.run_id} has no artifact {data.pointer}: {err}") from err
        folder = restore(pointer, remote, Path(tmp) / "workspace")
        md5 = folder_md5(folder.parent)
        if md5 != data.md5:
            raise DataError(f"the restored dataset has md5 {md5}, {name} v{lineage.version} records {data.md5}")
        out.mkdir(parents=True, exist_ok=True)
        for old in previous:
            old.unlink(missing_ok=True)
        files = sorted(folder.glob("*.parquet"))
        for file in files:
            shutil.copy2(file, out / file.name)
    summary = {"registered_model": name, "version": lineage.version, "run_id": lineage.run_id, "dvc_md5": md5,
               "remote": remote, "out": str(out), "files": [f.name for f in files], "content_hash": hash_dir(out)}
    (out / RESTORE_RECORD).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@stage_main("data")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(CommonSettings, argv, prog="sentimentops data", description=__doc__,
                                    add_arguments=_arguments)
    name, version, alias = chosen_version(args, settings)
    client = configure(settings)
    model_version = find_version(client, name, version=version, alias=alias)
    out = args.out or settings.home / "restored" / f"{name}-v{model_version.version}"
    restored = pull(client, model_version, out, args.remote)
    log.info("data pull: %s v%s: dataset %s from %s -> %s (%s)", name, restored["version"], restored["dvc_md5"],
             restored["remote"], out, ", ".join(restored["files"]))
    emit(json.dumps(restored))
    return 0
