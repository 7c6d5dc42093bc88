"""The rollout's side of the MLflow registry: resolve the candidate, move `champion`, record decisions.

Decisions and their evidence go to two places a person looks: the candidate's model-version tags (`rollout.*`)
and its training run (the same tags, plus the full evidence as `rollout/v<N>-<decision>.json`).
"""
from __future__ import annotations

import json

from sentimentops.steps.core.config import STORAGE_URI_TAG, CommonSettings
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.tracking import configure

TAG_MAX = 5000  # MLflow's limit on a model-version tag value
log = get_logger("sentimentops.rollout")


class Registry:
    def __init__(self, settings: CommonSettings):
        self.settings = settings
        self.name = settings.registered_model
        self.client = configure(settings)

    def resolve(self, ref: str) -> tuple[str, str]:
        """`challenger` / `@challenger` (an alias) or `4` (a version) -> (version, storage URI): the version's
        `storage_uri` tag, which register records (the URI KServe's storage initializer reads)."""
        ref = ref.removeprefix("@")
        if ref.isdigit():
            version = self.client.get_model_version(self.name, ref)
        else:
            version = self.client.get_model_version_by_alias(self.name, ref)
        recorded = (version.tags or {}).get(STORAGE_URI_TAG)
        if recorded:
            return str(version.version), recorded
        # A version registered before register recorded the tag: the same mapping register uses, from this
        # step's own settings (SENTIMENTOPS_MLFLOW_ARTIFACTS_DESTINATION), so older versions keep rolling out.
        computed = self.settings.storage_uri(self.client.get_model_version_download_uri(self.name, version.version))
        log.warning("%s version %s has no %s tag (registered before register recorded it): using %s",
                    self.name, version.version, STORAGE_URI_TAG, computed)
        return str(version.version), computed

    def alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def move_champion(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, "champion", version)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags)

    def record(self, version: str, tags: dict[str, str], evidence: dict | None = None,
               artifact: str | None = None) -> None:
        """`rollout.*` tags on the model version and on its training run; the evidence JSON as a run artifact."""
        mv = self.client.get_model_version(self.name, version)
        if evidence is not None:
            tags = {**tags, "rollout.evidence": compact_evidence(evidence)}
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, str(value)[:TAG_MAX])
        if mv.run_id:
            for key, value in tags.items():
                self.client.set_tag(mv.run_id, key, str(value)[:TAG_MAX])
            if evidence is not None and artifact:
                self.client.log_dict(mv.run_id, evidence, artifact)


def compact_evidence(evidence: dict) -> str:
    """The evidence as one tag value, always with its `final` judgement: whole when it fits; else without the
    interval analyses (a long soak has dozens; the run artifact keeps them all), then without the policy too."""
    for drop in ((), ("analyses",), ("analyses", "policy")):
        kept = {k: v for k, v in evidence.items() if k not in drop}
        if drop:
            kept["omitted"] = f"{', '.join(drop)}: see the run artifact rollout/"
        text = json.dumps(kept, separators=(",", ":"), sort_keys=True)
        if len(text) <= TAG_MAX:
            return text
    return json.dumps({"final": evidence.get("final")}, separators=(",", ":"))[:TAG_MAX]
