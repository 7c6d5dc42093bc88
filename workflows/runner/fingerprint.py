"""What a step's result depends on, as named parts, so the runner can reuse it and say why it did not.

A task's fingerprint is the sha256 of its parts (each a short hash, recorded in RUN/status.json):
  args                   the substituted command + args (input/output paths already mapped into the run folder)
  env.NAME               every variable the template or `--env` sets, plus each `SENTIMENTOPS_*` variable of the
                         runner's own environment that the stage reads (`SENTIMENTOPS_PROFILE`, a common field
                         `SENTIMENTOPS_<FIELD>`, or one of its own section's `SENTIMENTOPS_<SECTION>_<FIELD>`)
  input.NAME             the content hash of each input artifact folder (sentimentops.steps.core.manifests.hash_dir:
                         the one folder hash, which leaves out the manifest's timestamps)
  upstream.TASK          phase, fingerprint and finish time of each task named in `depends`: a task after one that
                         ran again runs again, even with no artifact between them (rollout after register)
  settings.SECTION.KEY   for a `sentimentops <stage> ...` command, every key of the selected profile's `common`
                         section and of the stage's own section(s) (`SENTIMENTOPS_PROFILE`, or `--profile`;
                         read with sentimentops.steps.core.config.load_profile, a name or a .yaml path)
  code.source            content hash of the package source: *.py and data files under steps/ and workflows/,
                         without charts/sentimentops/files/workflows, workflows/schemas (the spec itself reaches the fingerprint
                         through args and env) and steps/profiles (covered key by key by settings.*); this is
                         the code version (not the git commit: a docs-only commit re-runs nothing)

Only short hashes are recorded, never values: an env value may be a credential.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sentimentops.steps.core.config import DEFAULT_PROFILE, PROFILES_DIR, CommonSettings, load_profile

STEPS_ROOT = PROFILES_DIR.parent
WORKFLOWS_ROOT = Path(__file__).resolve().parents[1]
# Relative to the folder that holds the roots: what never changes a step's result, or is fingerprinted otherwise.
CODE_EXCLUDED = ("steps/profiles", "charts/sentimentops/files/workflows", "workflows/schemas")
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".jsonl", ".csv", ".txt", ".parquet")
# Sections a stage reads besides its own (steps/evaluate/scoring.py also loads ExportSettings, section `export`).
EXTRA_SECTIONS: Mapping[str, tuple[str, ...]] = {"evaluate": ("export",)}
_SHORT = 16  # hex digits kept per part


def short_hash(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_SHORT]


def stage_of(argv: list[str]) -> str | None:
    """`sentimentops register --model ...` -> `register`; None for any other command."""
    if len(argv) >= 2 and Path(argv[0]).name == "sentimentops" and not argv[1].startswith("-"):
        return argv[1]
    return None


def sections_of(stage: str | None) -> tuple[str, ...]:
    """Profile sections a stage's settings are built from; none for a command that is not a stage."""
    if stage is None:
        return ()
    return ("common", stage, *EXTRA_SECTIONS.get(stage, ()))


def applicable_env(environ: Mapping[str, str], sections: Iterable[str]) -> dict[str, str]:
    """The `SENTIMENTOPS_*` variables load_settings would read for these sections (log format and level do not
    change a result, so they are not among them)."""
    sections = tuple(sections)
    if not sections:
        return {}
    names = {"SENTIMENTOPS_PROFILE"} | {f"SENTIMENTOPS_{f.upper()}" for f in CommonSettings.model_fields}
    prefixes = tuple(f"SENTIMENTOPS_{s.upper()}_" for s in sections if s != "common")
    return {k: v for k, v in environ.items() if k in names or (prefixes and k.startswith(prefixes))}


def profile_name(argv: list[str], env: Mapping[str, str]) -> str:
    """As load_settings chooses it: a `--profile` flag, else SENTIMENTOPS_PROFILE, else the default."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--profile":
            return argv[i + 1]
    for arg in argv:
        if arg.startswith("--profile="):
            return arg.split("=", 1)[1]
    return env.get("SENTIMENTOPS_PROFILE") or DEFAULT_PROFILE


def settings_parts(sections: Iterable[str], profile: str) -> dict[str, str]:
    """`settings.SECTION.KEY` -> hash of the value, for each key of each section in the profile file."""
    sections = tuple(sections)
    if not sections:
        return {}
    try:
        content = load_profile(profile)
    except yaml.YAMLError as exc:
        raise ValueError(f"profile {profile}: {exc}") from exc
    parts = {}
    for section in sections:
        for key, value in sorted((content.get(section) or {}).items()):
            parts[f"settings.{section}.{key}"] = short_hash(value)
    return parts


def source_hash(roots: Iterable[Path] = (STEPS_ROOT, WORKFLOWS_ROOT), excluded: Iterable[str] = CODE_EXCLUDED,
                suffixes: tuple[str, ...] = CODE_SUFFIXES) -> str:
    """sha256 over `root-name/relative-path` and bytes of every source and data file under the roots."""
    excluded = tuple(excluded)
    digest = hashlib.sha256()
    for root in roots:
        root = Path(root)
        for file in sorted(root.rglob("*")):
            rel = f"{root.name}/{file.relative_to(root).as_posix()}"
            if (not file.is_file() or file.suffix not in suffixes or "__pycache__" in file.parts
                    or any(rel == e or rel.startswith(e + "/") for e in excluded)):
                continue
            digest.update(rel.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:_SHORT]


def code_parts() -> dict[str, str]:
    """`code.source`, computed once per run. The git commit is left out on purpose: a commit that changes only
    docs or tests must not re-run a 2-minute train, and an edit not yet committed must re-run it."""
    return {"code.source": source_hash()}


def combine(parts: Mapping[str, str]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(dict(sorted(parts.items()))).encode()).hexdigest()


_LABELS = (("args", "args changed"), ("env.", "env changed"), ("input.", "input changed"),
           ("upstream.", "upstream re-ran"), ("settings.", "settings changed"), ("code.source", "code changed"))


def changes(before: Mapping[str, str], after: Mapping[str, str], limit: int = 4) -> str:
    """`settings changed: register.baseline_accuracy; input changed: model` (added, removed or different)."""
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    groups: list[str] = []
    for prefix, label in _LABELS:
        names = [k[len(prefix):] for k in changed if k.startswith(prefix)]
        if not names:
            continue
        if prefix in ("args", "code.source"):
            groups.append(label)
        else:
            more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
            groups.append(f"{label}: {', '.join(names[:limit])}{more}")
    return "; ".join(groups) or "fingerprint changed"
