"""Typed settings for every step, through pydantic-settings: flags > `SENTIMENTOPS_*` environment > profile file.

A profile (`steps/profiles/<name>.yaml`, chosen by `SENTIMENTOPS_PROFILE` or `--profile`, default `local`) holds a
`common` section shared by all steps and one section per step. Environment names: `SENTIMENTOPS_<FIELD>` for common
fields, `SENTIMENTOPS_<SECTION>_<FIELD>` for a step's own fields. A key the profile does not know (a section or a
field: a typo) is an error naming the key and the file, never silently dropped.

`load_settings` layers the three sources; constructing a settings class directly (`TrainSettings(epochs=2)`) gives
its defaults plus the arguments, nothing read from files or the environment. `parse_settings` builds a stage's
command line from the fields themselves: one flag per field, its description as the flag's help.

`{home}` in any value (a field's default, the profile file, the environment or a flag; strings, paths, lists of
them) is replaced by the state folder once the settings object is built, however it is built: a default left
unexpanded once made Prometheus read `{home}/rollout/local/{home}/rollout/local/targets.json` (a literal `{home}/`
folder in the working directory, and a local canary analysed on zero requests).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sentimentops.steps.core.errors import UsageError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
DEFAULT_PROFILE = "local"


# The profile file's sections: `common` and one per step's settings class (`section`). A section not listed here is
# a typo in a profile (tests/unit/test_config_manifest.py checks every settings class's section is listed).
SECTIONS = ("common", "ingest", "validate", "version", "train", "evaluate", "register", "export", "serve",
            "rollout", "drift", "notify", "feedback", "score")
# The environment `load_settings` reads (None: os.environ); direct construction reads none.
_LAYERED_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("_LAYERED_ENV", default=None)
_LAYERED: ContextVar[bool] = ContextVar("_LAYERED", default=False)
STORAGE_URI_TAG = "storage_uri"  # the model version's tag: where KServe reads the model (CommonSettings.storage_uri)


class CommonSettings(BaseSettings):
    """Settings every step shares (tracking, registry, where local state lives)."""

    model_config = SettingsConfigDict(extra="forbid", protected_namespaces=())
    section: ClassVar[str] = "common"

    profile: str = Field(DEFAULT_PROFILE, description="Profile name: local (embedded defaults) or gke.")
    home: Path = Field(Path(".sentimentops"), description="Folder holding all local state (ignored by git).")
    mlflow_tracking_uri: str = Field("sqlite:///{home}/mlflow.db", description="MLflow tracking + registry URI.")
    mlflow_artifact_root: str = Field("{home}/mlartifacts", description="Artifact root for new experiments.")
    mlflow_artifacts_destination: str = Field(
        "", description="The MLflow server's --artifacts-destination (gs://bucket/artifacts): a proxied "
        "mlflow-artifacts:/ download URI maps onto it, giving a storage URI KServe's storage initializer can read; "
        "empty: the download URI as it is.")
    experiment: str = Field("sentiment-training", description="MLflow experiment name.")
    registered_model: str = Field("sentiment", description="MLflow registered model name.")
    allow_offline_fallback: bool = Field(
        True, description="When the Hugging Face hub is unreachable, fall back to local data and an offline model."
    )
    production_store: str = Field(
        "{home}/production", description="Where production data lives (steps/core/production.py): the predictor's "
        "captured requests and feedback labels, read by ingest; a local folder or gs://BUCKET/PREFIX; empty: none.")
    run_reason: str = Field("manual", description="Why this pipeline run started (manual, cron, drift: ...).")
    workflow_name: str = Field("local", description="Argo workflow name (or the local run folder's name).")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """flags (init arguments) > environment > profile, when built by `load_settings`; else the arguments."""
        if not _LAYERED.get():
            return (init_settings,)
        env = _LAYERED_ENV.get()
        env = os.environ if env is None else env
        init = getattr(init_settings, "init_kwargs", {}) or {}
        profile = init.get("profile") or env.get("SENTIMENTOPS_PROFILE") or DEFAULT_PROFILE
        return (init_settings, EnvSource(settings_cls, env), ProfileSource(settings_cls, str(profile)))

    def storage_uri(self, download_uri: str) -> str:
        """A model version's download URI as KServe's storage initializer can read it: a proxied
        `mlflow-artifacts:/x` (the server runs with --artifacts-destination D) is D/x, e.g.
        mlflow-artifacts:/1/models/m-x/artifacts -> gs://b/artifacts/1/models/m-x/artifacts. register records the
        result as the version's STORAGE_URI_TAG; the rollout reads it (one mapping, here)."""
        destination = self.mlflow_artifacts_destination
        if download_uri.startswith("mlflow-artifacts:") and destination:
            path = re.sub(r"^mlflow-artifacts:(//[^/]*)?/*", "", download_uri)
            return f"{destination.rstrip('/')}/{path}"
        return download_uri

    def require(self, *names: str) -> None:
        """A UsageError naming the environment variable of each named setting that is empty (the gke profile
        leaves cluster locations to the environment the chart sets: a missing one fails here in one line)."""
        empty = [n for n in names if not str(getattr(self, n) or "").strip()]
        if empty:
            variables = ", ".join(_env_name(type(self), n) for n in empty)
            raise UsageError(f"profile {self.profile!r}: {', '.join(empty)} not set: set {variables} (in the "
                             "cluster the chart passes it from its values to every WorkflowTemplate)")

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


def _env_name(cls: type[BaseSettings], field: str) -> str:
    section = getattr(cls, "section", "common")
    if field in CommonSettings.model_fields or section == "common":
        return f"SENTIMENTOPS_{field.upper()}"
    return f"SENTIMENTOPS_{section.upper()}_{field.upper()}"


def _structured(info: FieldInfo) -> bool:
    """A list, tuple, dict or model field: its environment value is JSON."""
    ann = info.annotation
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_structured(FieldInfo(annotation=a)) for a in typing.get_args(ann) if a is not type(None))
    return origin in (list, tuple, dict, set) or ann in (list, tuple, dict, set) or (
        isinstance(ann, type) and issubclass(ann, BaseModel))


class EnvSource(PydanticBaseSettingsSource):
    """`SENTIMENTOPS_<FIELD>` / `SENTIMENTOPS_<SECTION>_<FIELD>`; structured fields read as JSON."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = _env_name(self.settings_cls, field_name)
        return self.env.get(name), name, _structured(field)

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, info in self.settings_cls.model_fields.items():
            raw, name, structured = self.get_field_value(info, field_name)
            # Empty is unset: a WorkflowTemplate parameter the chart leaves empty keeps the profile's value.
            if raw is None or raw == "":
                continue
            if structured:
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise UsageError(f"{name}: expected JSON for a structured setting, got {raw!r}") from err
            values[field_name] = raw
        return values


def profile_path(name: str) -> Path:
    """The profile file: a name with a slash or a .yaml suffix is a path, else steps/profiles/<name>.yaml."""
    return Path(name) if (name.endswith((".yaml", ".yml")) or "/" in name) else PROFILES_DIR / f"{name}.yaml"


def load_profile(name: str) -> dict[str, Any]:
    """The profile file's sections; an unknown profile or section is a UsageError."""
    path = profile_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise UsageError(f"unknown profile {name!r}: no file {path} (known profiles: {', '.join(known)})")
    sections = yaml.safe_load(path.read_text()) or {}
    if not isinstance(sections, dict):
        raise UsageError(f"profile {path}: expected sections (common, {', '.join(SECTIONS[1:])}), got {sections!r}")
    for section, body in sections.items():
        if section not in SECTIONS:
            raise UsageError(f"profile {path}: unknown section {section!r} (known: {', '.join(SECTIONS)})")
        if body is not None and not isinstance(body, dict):
            raise UsageError(f"profile {path}: section {section!r} must be a mapping of settings")
    return sections


class ProfileSource(PydanticBaseSettingsSource):
    """The profile's `common` section and the class's own section; a key the class does not declare is an error."""

    def __init__(self, settings_cls: type[BaseSettings], profile: str) -> None:
        super().__init__(settings_cls)
        self.profile = profile

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Required by the base class; pydantic-settings calls __call__ below, which reads the file once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        sections = load_profile(self.profile)
        section = getattr(self.settings_cls, "section", "common")
        values: dict[str, Any] = {"profile": self.profile}
        for name in ("common", section) if section != "common" else ("common",):
            body = sections.get(name) or {}
            known = CommonSettings.model_fields if name == "common" else self.settings_cls.model_fields
            unknown = sorted(set(body) - set(known))
            if unknown:
                raise UsageError(f"profile {profile_path(self.profile)}: unknown key {name}.{unknown[0]} "
                                 f"(the {name} settings are: {', '.join(sorted(known))})")
            values.update(body)
        return values


def load_settings(
    cls: type[T],
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> T:
    """Builds `cls` from profile < environment < overrides (flags; None values are ignored)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(cls.model_fields))
    if unknown:
        raise UsageError(f"{cls.__name__} has no setting {unknown[0]!r}")
    layered, environ = _LAYERED.set(True), _LAYERED_ENV.set(env)
    try:
        return cls(**given)  # `{home}` is expanded by the model itself (CommonSettings._expand_home)
    finally:
        _LAYERED.reset(layered)
        _LAYERED_ENV.reset(environ)


def flags(namespace: Any, *names: str) -> dict[str, Any]:
    """argparse Namespace -> overrides dict (dashes to underscores), keeping only the given names when named."""
    data = {k.replace("-", "_"): v for k, v in vars(namespace).items()}
    return {k: data[k] for k in names} if names else data


def _flag_type(annotation: Any) -> tuple[dict[str, Any], str]:
    """argparse keyword arguments and a metavar for a field's annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}, ""
    if origin is Literal:
        return {"choices": list(typing.get_args(annotation)), "type": type(typing.get_args(annotation)[0])}, ""
    if origin in (list, tuple, set) or annotation in (list, tuple, set):
        inner = args[0] if args and args[0] is not Ellipsis else str
        kwargs, metavar = _flag_type(inner)
        if "type" in kwargs and "choices" not in kwargs:
            return {"nargs": "+", "type": kwargs["type"]}, metavar
        return {"nargs": "+", "type": json.loads}, "JSON"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return {"type": json.loads}, "JSON"
    if annotation in (int, float, str):
        return {"type": annotation}, ""
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return {"type": Path}, ""
    return {"type": str}, "VALUE"


def add_settings_flags(parser: argparse.ArgumentParser, cls: type[CommonSettings], *,
                       skip: Sequence[str] = ()) -> None:
    """One `--field-name` flag per field of `cls` (common fields in their own group), help = the description."""
    own = parser.add_argument_group(f"{cls.section} settings (profile section `{cls.section}`, "
                                    f"environment SENTIMENTOPS_{cls.section.upper()}_<NAME>)")
    common = parser.add_argument_group("common settings (profile section `common`, environment SENTIMENTOPS_<NAME>)")
    for name, info in cls.model_fields.items():
        if name in skip:
            continue
        kwargs, metavar = _flag_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        shown = default.value if hasattr(default, "value") else default
        help_text = (info.description or "").rstrip(".") + (f" (default: {shown})" if shown not in ("", None) else "")
        if metavar and "action" not in kwargs:
            kwargs["metavar"] = metavar
        group = common if name in CommonSettings.model_fields and cls is not CommonSettings else own
        group.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                           help=help_text.replace("%", "%%") or None, **kwargs)


def settings_from_args(cls: type[T], args: argparse.Namespace, *, skip: Sequence[str] = (),
                       env: Mapping[str, str] | None = None) -> T:
    """The layered settings from a namespace parsed with `add_settings_flags` (for commands with sub-commands:
    add the flags to each sub-parser, then call this with the parsed namespace)."""
    overrides = {name: getattr(args, name) for name in cls.model_fields if name not in skip and hasattr(args, name)}
    return load_settings(cls, overrides, env=env)


def parse_settings(cls: type[T], argv: Sequence[str] | None, *, prog: str, description: str | None = None,
                   add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                   env: Mapping[str, str] | None = None) -> tuple[T, argparse.Namespace]:
    """A stage's command line: its own arguments (`add_arguments`: input and output folders) plus one flag per
    settings field; returns the layered settings (profile < environment < these flags) and the parsed arguments."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_arguments is not None:
        add_arguments(parser)
    taken = {a.dest for a in parser._actions}
    add_settings_flags(parser, cls, skip=[n for n in cls.model_fields if n in taken])
    args = parser.parse_args(argv)
    return settings_from_args(cls, args, skip=sorted(taken), env=env), args
