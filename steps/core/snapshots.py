"""DVC workspaces of dataset snapshots: the version step writes one, `sentimentops data pull` restores from one.

One source for how DVC behaves here: the committed `.dvc/config` at the repository root (analytics off, the
remotes per profile). A workspace (a DVC project without git: `Repo.init(no_scm=True)`) takes that file's `core`
section and only its remote URL from the step's settings (a local folder, or gs://... on GKE through dvc-gs).

Where the committed config is found: SENTIMENTOPS_DVC_CONFIG (empty = unset; the images set it, since an installed
package has no checkout around it: images/base.Dockerfile copies `.dvc/config` into /src), else the checkout this
package file lives in (an editable install, the tests, `make run`). A restore (`data pull`) from an installed wheel
has neither: it falls back to FALLBACK_CORE (analytics off), since it only reads a remote it is given.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sentimentops.steps.core.errors import DataError, UsageError

DVC_CONFIG_ENV = "SENTIMENTOPS_DVC_CONFIG"
CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / ".dvc" / "config"  # steps/core/ -> the repository root
TRACKED = "dataset"  # the folder name inside a workspace; its pointer is `dataset.dvc`
POINTER = f"{TRACKED}.dvc"
WORKSPACE_REMOTE = "storage"  # the one remote of a workspace (its URL comes from settings)
FALLBACK_CORE = {"analytics": False}  # a restore without the committed config: what matters of it (module docstring)
DVC_MISSING = ("`data pull` needs the version extra: pip install 'sentimentops[version,register]'; a gs:// remote "
               "also needs Google credentials")


def require_dvc() -> None:
    """A UsageError saying what to install when DVC (the version extra) is not installed."""
    try:
        import dvc.repo  # noqa: F401
    except ImportError as err:
        raise UsageError(f"{DVC_MISSING} ({err})") from err


def committed_config() -> Path:
    """The committed `.dvc/config` (module docstring); a UsageError naming the variable when there is none."""
    given = os.environ.get(DVC_CONFIG_ENV, "").strip()
    path = Path(given) if given else CHECKOUT_CONFIG
    if not path.is_file():
        raise UsageError(f"no DVC config at {path}: set {DVC_CONFIG_ENV} to the repository's .dvc/config "
                         "(the images copy it to /src/.dvc/config)")
    return path


def committed_core(*, fallback: bool = False) -> dict[str, Any]:
    """The committed config's `core` section, without its default remote (a workspace has its own). With
    `fallback`, no config at all (SENTIMENTOPS_DVC_CONFIG unset, no checkout) gives FALLBACK_CORE instead; a
    SENTIMENTOPS_DVC_CONFIG naming a missing file is still a UsageError (a typo, not an installed wheel)."""
    from dvc.config import Config  # the version extra

    if fallback and not os.environ.get(DVC_CONFIG_ENV, "").strip() and not CHECKOUT_CONFIG.is_file():
        return dict(FALLBACK_CORE)
    core = dict(Config.load_file(str(committed_config())).get("core", {}))
    core.pop("remote", None)
    return core


def committed_remotes() -> dict[str, str]:
    """Remote name -> URL as the committed config states it (a relative URL is relative to `.dvc/`)."""
    from dvc.config import Config

    return {name: conf["url"] for name, conf in Config.load_file(str(committed_config())).get("remote", {}).items()}


def open_workspace(workspace: Path, remote: str, *, fallback: bool = False):
    """The DVC repo at `workspace`, created on first use, seeded with the committed `core` section (`fallback`:
    committed_core) and `remote` as its default remote."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")  # before the first dvc import, whatever the config says
    from dvc.repo import Repo  # the version extra

    core = committed_core(fallback=fallback)
    workspace.mkdir(parents=True, exist_ok=True)
    repo = Repo(str(workspace)) if (workspace / ".dvc").is_dir() else Repo.init(str(workspace), no_scm=True)
    with repo.config.edit() as conf:
        conf["core"].update(core)
        conf["core"]["remote"] = WORKSPACE_REMOTE
        conf["remote"][WORKSPACE_REMOTE] = {"url": remote}
    return repo


@dataclass(frozen=True)
class Pointer:
    """What a `.dvc` pointer file says about the tracked dataset folder."""

    md5: str        # `<md5>.dir`: the dataset's lineage id
    nfiles: int | None
    size: int | None

    @classmethod
    def parse(cls, text: str, source: str = POINTER) -> Pointer:
        try:
            out = (yaml.safe_load(text) or {})["outs"][0]
            return cls(md5=str(out["md5"]), nfiles=out.get("nfiles"), size=out.get("size"))
        except (yaml.YAMLError, KeyError, IndexError, TypeError) as err:
            raise DataError(f"{source} is not a DVC pointer (outs[0].md5): {err}") from err


def restore(pointer_file: Path, remote: str, workspace: Path) -> Path:
    """Fetches the snapshot `pointer_file` names from `remote` into a fresh `workspace` and checks it out; returns
    the dataset folder. An unreachable remote or a missing object is a DataError naming the remote."""
    if workspace.exists():
        shutil.rmtree(workspace)
    repo = open_workspace(workspace, remote, fallback=True)
    shutil.copy2(pointer_file, workspace / POINTER)
    from dvc.exceptions import DvcException

    try:
        repo.pull(targets=[str(workspace / POINTER)])
    except DvcException as err:
        raise DataError(f"could not restore {Pointer.parse(pointer_file.read_text()).md5} from the DVC remote "
                        f"{remote}: {err}") from err
    folder = workspace / TRACKED
    if not folder.is_dir():
        raise DataError(f"the DVC remote {remote} gave no {TRACKED}/ folder for {pointer_file}")
    return folder


def folder_md5(workspace: Path) -> str:
    """The md5 DVC computes for the workspace's dataset folder from the bytes on disk now, in the pointer's form
    (`<md5>.dir`). Every file is read and hashed: DVC's state db is bypassed, since a checkout records each file's
    hash there as the object's name, so it would answer for a corrupted remote object with the expected hash."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.state import StateNoop

    repo = Repo(str(workspace))
    try:
        odb = repo.cache.local
        odb.state = StateNoop()  # hash the bytes on disk; the state db would answer with the checked-out hash
        # dry_run: hash only, nothing written to the cache.
        _, _, obj = build(odb, str(workspace / TRACKED), repo.fs, "md5", dry_run=True)
    finally:
        repo.close()
    return str(obj.hash_info.value)
