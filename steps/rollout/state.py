"""The rollout's crash-safe state: a handful of `sentimentops.io/rollout-*` annotations written in the SAME patch
as the change they describe (KServe), or in the same atomic file replace (local).

So there is never a served canary without a record of it, nor a record without the canary: a re-run reads the
state and resumes the soak (phase canary), applies a decision already taken (phase promoting/rolling-back), or
reports the finished rollout (promoted/rolled-back) without touching anything.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Literal

PREFIX = "sentimentops.io/rollout-"
Phase = Literal["canary", "promoting", "rolling-back", "promoted", "rolled-back"]
ACTIVE: tuple[str, ...] = ("canary", "promoting", "rolling-back")
FINAL: tuple[str, ...] = ("promoted", "rolled-back")
REASON_MAX = 1000  # annotations share 256 KiB per object; the full evidence lives in MLflow


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def seconds_since(iso: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


@dataclass(frozen=True)
class RolloutState:
    candidate_version: str
    candidate_uri: str
    previous_version: str
    previous_uri: str
    phase: Phase
    started: str  # ISO time the canary was deployed: the soak is measured from here, across re-runs
    percent: int
    previous_predictor: str = ""  # JSON of the predictor spec to restore (KServe serverless rollback)
    decision: str = ""  # promote | rollback
    reason: str = ""
    decided: str = ""

    @property
    def elapsed_s(self) -> float:
        return seconds_since(self.started)

    def with_phase(self, phase: Phase, **changes: str) -> RolloutState:
        return replace(self, phase=phase, **changes)

    def to_annotations(self) -> dict[str, str]:
        values = asdict(self)
        values["reason"] = values["reason"][:REASON_MAX]
        return {PREFIX + k.replace("_", "-"): str(v) for k, v in values.items()}

    @classmethod
    def from_annotations(cls, annotations: dict[str, str] | None) -> RolloutState | None:
        annotations = annotations or {}
        if PREFIX + "phase" not in annotations:
            return None
        values = {f.name: annotations.get(PREFIX + f.name.replace("_", "-"), "") for f in fields(cls)}
        values["percent"] = int(values["percent"] or 0)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

