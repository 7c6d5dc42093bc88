"""Typed settings for every step: flags > `SENTIMENTOPS_*` environment > profile file.

A profile (`steps/profiles/<name>.yaml`, chosen by `SENTIMENTOPS_PROFILE`, default `local`) holds a `common`
section shared by all steps and one section per step. Environment names: `SENTIMENTOPS_<FIELD>` for common fields,
`SENTIMENTOPS_<SECTION>_<FIELD>` for a step's own fields. String values may use `{home}`, the state folder.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "local"


class CommonSettings(BaseModel):
    """Settings every step shares (tracking, registry, where local state lives)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    section: ClassVar[str] = "common"

    profile: str = Field(DEFAULT_PROFILE, description="Profile name: local (embedded defaults) or gke.")
    home: Path = Field(Path(".sentimentops"), description="Folder holding all local state (ignored by git).")
    mlflow_tracking_uri: str = Field("sqlite:///{home}/mlflow.db", description="MLflow tracking + registry URI.")
    mlflow_artifact_root: str = Field("{home}/mlartifacts", description="Artifact root for new experiments.")
    experiment: str = Field("sentiment-training", description="MLflow experiment name.")
    registered_model: str = Field("sentiment", description="MLflow registered model name.")
    allow_offline_fallback: bool = Field(
        True, description="When the Hugging Face hub is unreachable, fall back to local data and an offline model."
    )
    run_reason: str = Field("manual", description="Why this pipeline run started (manual, cron, drift: ...).")
    workflow_name: str = Field("local", description="Argo workflow name (or the local run folder's name).")


T = TypeVar("T", bound=CommonSettings)


def _env_name(cls: type[CommonSettings], field: str) -> str:
    if field in CommonSettings.model_fields or cls.section == "common":
        return f"SENTIMENTOPS_{field.upper()}"
    return f"SENTIMENTOPS_{cls.section.upper()}_{field.upper()}"


def load_profile(name: str) -> dict[str, Any]:
    """The profile file's sections; a name with a slash or .yaml suffix is read as a path."""
    path = Path(name) if (name.endswith((".yaml", ".yml")) or "/" in name) else PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ValueError(f"unknown profile {name!r}: no file {path} (known profiles: {', '.join(known)})")
    return yaml.safe_load(path.read_text()) or {}


def load_settings(
    cls: type[T],
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> T:
    """Builds `cls` from profile < environment < overrides (flags; None values are ignored)."""
    env = os.environ if env is None else env
    profile = (overrides or {}).get("profile") or env.get("SENTIMENTOPS_PROFILE") or DEFAULT_PROFILE
    sections = load_profile(profile)
    values: dict[str, Any] = {"profile": profile}
    values.update(sections.get("common") or {})
    if cls.section != "common":
        values.update(sections.get(cls.section) or {})
    for field in cls.model_fields:
        name = _env_name(cls, field)
        if name in env:
            values[field] = env[name]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(values) - set(cls.model_fields)
    # Profile files carry every step's common keys; drop only keys this class does not declare at all.
    values = {k: v for k, v in values.items() if k not in unknown}
    home = Path(os.path.expanduser(str(values.get("home", cls.model_fields["home"].default)))).resolve()
    values["home"] = home
    for key, value in values.items():
        if isinstance(value, str) and "{home}" in value:
            values[key] = value.replace("{home}", str(home))
    return cls(**values)


def flags(namespace: Any, *names: str) -> dict[str, Any]:
    """argparse Namespace -> overrides dict (dashes to underscores), keeping only the given names when named."""
    data = {k.replace("-", "_"): v for k, v in vars(namespace).items()}
    return {k: data[k] for k in names} if names else data
