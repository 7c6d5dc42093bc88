"""Typed settings for every step: flags > `SENTIMENTOPS_*` environment > profile file.

A profile (`steps/profiles/<name>.yaml`, chosen by `SENTIMENTOPS_PROFILE`, default `local`) holds a `common`
section shared by all steps and one section per step. Environment names: `SENTIMENTOPS_<FIELD>` for common fields,
`SENTIMENTOPS_<SECTION>_<FIELD>` for a step's own fields.

`{home}` in any value (a field's default, the profile file, the environment or a flag; strings, paths, lists of
them) is replaced by the state folder once the settings object is built, however it is built: a default left
unexpanded once made Prometheus read `{home}/rollout/local/{home}/rollout/local/targets.json` (a literal `{home}/`
folder in the working directory, and a local canary analysed on zero requests).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
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

    @model_validator(mode="after")
    def _expand_home(self):
        """`home` made absolute (`~` expanded), then `{home}` replaced in every other field: the one place it
        happens, so a default of any settings class (Field defaults and Path fields included) cannot escape it."""
        home = Path(os.path.expanduser(str(self.home))).resolve()
        self.__dict__["home"] = home
        for name in type(self).model_fields:
            if name != "home":
                self.__dict__[name] = expand_home(self.__dict__[name], home)
        return self


T = TypeVar("T", bound=CommonSettings)
PLACEHOLDER = "{home}"  # in any settings value: the state folder


def expand_home(value: Any, home: Path) -> Any:
    """`value` with `{home}` replaced by `home`, through strings, paths, lists, tuples, dicts and nested models."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, str(home)) if PLACEHOLDER in value else value
    if isinstance(value, PurePath):
        return type(value)(str(value).replace(PLACEHOLDER, str(home))) if PLACEHOLDER in str(value) else value
    if isinstance(value, list | tuple):
        return type(value)(expand_home(v, home) for v in value)
    if isinstance(value, dict):
        return {k: expand_home(v, home) for k, v in value.items()}
    if isinstance(value, BaseModel):  # a copy: a model default may be shared between instances
        return value.model_copy(update={n: expand_home(getattr(value, n), home) for n in type(value).model_fields})
    return value


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
    return cls(**values)  # `{home}` is expanded by the model itself (CommonSettings._expand_home)


def flags(namespace: Any, *names: str) -> dict[str, Any]:
    """argparse Namespace -> overrides dict (dashes to underscores), keeping only the given names when named."""
    data = {k.replace("-", "_"): v for k, v in vars(namespace).items()}
    return {k: data[k] for k in names} if names else data
