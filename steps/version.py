"""version: snapshot the dataset with DVC and push it to the configured remote.

The DVC hash of the dataset folder goes into the manifest; training records it in MLflow, so a served prediction
traces back to the exact data. Re-running on identical data changes nothing: DVC's cache and remote are content
addressed, so `add` and `push` find every object already there.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.manifests import write_manifest
from sentimentops.steps.core.snapshots import POINTER, TRACKED, Pointer, open_workspace

__all__ = ["VersionSettings", "main", "open_workspace", "snapshot"]
log = get_logger(__name__)


class VersionSettings(CommonSettings):
    section: ClassVar[str] = "version"
    remote: str = Field("{home}/dvc-remote", description="DVC remote: a local folder, or gs://bucket/path on GKE "
                        "(the gke profile leaves it empty: the chart's dvc.remote value sets it).")
    workspace: Path = Field(Path("{home}/dvc-workspace"), description="The DVC project (no git) holding snapshots.")


def snapshot(dataset: Path, settings: VersionSettings) -> dict[str, str]:
    """Copies the dataset's files into the workspace, `dvc add` + `dvc push`; returns the DVC refs."""
    repo = open_workspace(settings.workspace, settings.remote)  # analytics etc. from the committed .dvc/config
    target = settings.workspace / TRACKED
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for file in sorted(dataset.glob("*.parquet")):
        shutil.copy2(file, target / file.name)
    repo.add(str(target))
    pushed = repo.push()
    pointer = Pointer.parse((settings.workspace / POINTER).read_text())
    return {"dvc_md5": pointer.md5, "dvc_remote": settings.remote,
            "dvc_files": "" if pointer.nfiles is None else str(pointer.nfiles), "dvc_pushed": str(pushed)}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="Ingest output folder (<split>.parquet).")
    parser.add_argument("--out", type=Path, required=True, help="Output folder: dataset.dvc and manifest.json.")


@stage_main("version")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(VersionSettings, argv, prog="sentimentops version", description=__doc__,
                                    add_arguments=_arguments)
    settings.require("remote")  # the gke profile leaves it to SENTIMENTOPS_VERSION_REMOTE (the chart's dvc.remote)
    if not args.dataset.is_dir():
        raise DataError(f"dataset folder {args.dataset} does not exist")
    if not any(args.dataset.glob("*.parquet")):
        raise DataError(f"{args.dataset} holds no parquet files")
    refs = snapshot(args.dataset, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(settings.workspace / POINTER, args.out / POINTER)
    log.info("version: dataset %s (%s new objects pushed to %s)", refs["dvc_md5"], refs["dvc_pushed"],
             settings.remote)
    write_manifest(args.out, "version", inputs={"dataset": args.dataset}, outputs={"pointer": POINTER},
                   params={"remote": settings.remote}, metrics={"pushed_objects": float(refs["dvc_pushed"])},
                   refs=refs)
    return 0
