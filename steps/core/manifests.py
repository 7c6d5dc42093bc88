"""The small JSON manifest every step writes beside its outputs, and the content hashes that chain them.

A downstream step records the content hash of each input folder, so an output whose inputs' hash is unchanged can
be reused, and a served prediction can be traced back to its dataset and commit (ARCHITECTURE.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
# Files that never take part in a folder's identity: the manifest itself (it holds timestamps) and logs.
_VOLATILE = {MANIFEST, "log.txt"}


class Manifest(BaseModel):
    step: str
    created: str
    git_sha: str
    inputs: dict[str, str] = Field(default_factory=dict, description="input name -> content hash of the folder")
    outputs: dict[str, str] = Field(default_factory=dict, description="output name -> path relative to the folder")
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    refs: dict[str, Any] = Field(default_factory=dict, description="ids in other systems: MLflow run, DVC md5, ...")


def hash_dir(path: Path) -> str:
    """sha256 over relative paths and bytes of every file below `path` (sorted), volatile files excluded."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name in _VOLATILE or "checkpoints" in file.relative_to(path if path.is_dir() else path.parent).parts:
            continue
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def git_sha() -> str:
    """The commit this code came from: SENTIMENTOPS_GIT_SHA (baked into images) or `git rev-parse`."""
    if sha := os.environ.get("SENTIMENTOPS_GIT_SHA"):
        return sha
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_manifest(
    out_dir: Path,
    step: str,
    *,
    inputs: dict[str, Path] | None = None,
    outputs: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    refs: dict[str, Any] | None = None,
) -> Manifest:
    manifest = Manifest(
        step=step,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        git_sha=git_sha(),
        inputs={name: hash_dir(p) for name, p in (inputs or {}).items()},
        outputs=outputs or {},
        params=params or {},
        metrics={k: float(v) for k, v in (metrics or {}).items()},
        refs=refs or {},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(out_dir / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: is it the output folder of a pipeline step?")
    return Manifest.model_validate_json(path.read_text())


def reusable(out_dir: Path, step: str, inputs: dict[str, Path], params: dict[str, Any]) -> Manifest | None:
    """The existing manifest when `out_dir` already holds this step's output for the same inputs and params
    (every given param equal to the recorded one)."""
    try:
        old = read_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return None
    same_inputs = old.inputs == {name: hash_dir(p) for name, p in inputs.items()}
    wanted = json.loads(json.dumps(params, default=str))
    same_params = all(old.params.get(key) == value for key, value in wanted.items())
    return old if old.step == step and same_inputs and same_params else None
