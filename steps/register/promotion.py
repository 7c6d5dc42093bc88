"""The promotion policy: a pure function deciding whether a challenger becomes champion, and why.

`champion` moves only when the challenger beats the configured baseline and the current champion by the configured
margins, on metrics measured on the same held-out test rows (sentimentops.steps.evaluate). Every check is recorded, passed or
not, so the decision can be read back from the model registry.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, Field


class PolicySettings(BaseModel):
    baseline_accuracy: float = Field(0.80, ge=0, le=1, description="Accuracy a model must reach to serve at all.")
    min_gain_over_baseline: float = Field(0.0, ge=0, description="Extra accuracy required above the baseline.")
    min_gain_over_champion: float = Field(0.0, ge=-1, le=1,
                                          description="Accuracy gain over the champion required to replace it.")
    max_f1_drop: float = Field(0.01, ge=0, description="F1 may fall at most this much below the champion's.")


@dataclass(frozen=True)
class EvalMetrics:
    """What the policy compares, for one model on the held-out test rows (evaluate's `test_*` metrics).

    NaN marks a metric that is missing or could not be measured: the policy treats it as such (never as 0)."""

    accuracy: float
    f1: float
    roc_auc: float = math.nan

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], prefix: str = "") -> EvalMetrics:
        """From `{prefix}accuracy`, `{prefix}f1`, `{prefix}roc_auc` (an evaluate manifest's metrics with prefix
        `test_`, a registry version's tags); a missing or non-numeric value is NaN."""

        def number(key: str) -> float:
            value = values.get(prefix + key)
            try:
                return float(value) if value is not None else math.nan  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return math.nan

        return cls(accuracy=number("accuracy"), f1=number("f1"), roc_auc=number("roc_auc"))


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> str:
        return ("promote: " if self.promote else "keep champion: ") + "; ".join(self.reasons)


# Metrics are ratios of counts: compare with a tolerance so 0.80 + 0.05 "reaches" 0.85 (binary floats do not).
EPS = 1e-9


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def decide(challenger: EvalMetrics, champion: EvalMetrics | None, policy: PolicySettings,
           *, challenger_is_champion: bool = False) -> Decision:
    """challenger/champion: metrics on the same test rows; champion None if there is none."""
    decision = Decision(promote=False)
    acc, f1 = challenger.accuracy, challenger.f1
    if not _finite(acc, f1):
        decision.checks["metrics_valid"] = False
        decision.reasons.append("challenger metrics are missing or not finite")
        return decision
    if challenger_is_champion:
        # A re-run after a crash past the alias move: report the promotion again so the rollout still follows.
        decision.promote = True
        decision.checks["already_champion"] = True
        decision.reasons.append("this version is already the champion")
        return decision
    need = policy.baseline_accuracy + policy.min_gain_over_baseline
    decision.checks["beats_baseline"] = acc + EPS >= need
    if not decision.checks["beats_baseline"]:
        decision.reasons.append(f"accuracy {acc:.4f} below the baseline {policy.baseline_accuracy:.4f}"
                                f" + margin {policy.min_gain_over_baseline:.4f}")
        return decision
    decision.reasons.append(f"accuracy {acc:.4f} >= baseline {need:.4f}")
    if champion is None:
        decision.promote = True
        decision.reasons.append("no champion yet")
        return decision
    champ_acc, champ_f1 = champion.accuracy, champion.f1
    if not _finite(champ_acc, champ_f1):
        decision.promote = True
        decision.reasons.append("the champion could not be scored on these test rows")
        return decision
    gain = acc - champ_acc
    decision.checks["beats_champion"] = gain + EPS >= policy.min_gain_over_champion
    decision.checks["f1_within_tolerance"] = f1 + EPS >= champ_f1 - policy.max_f1_drop
    if not decision.checks["beats_champion"]:
        decision.reasons.append(f"accuracy gain over the champion {gain:+.4f} < required "
                                f"{policy.min_gain_over_champion:+.4f}")
    if not decision.checks["f1_within_tolerance"]:
        decision.reasons.append(f"F1 {f1:.4f} falls more than {policy.max_f1_drop:.4f} below the champion's "
                                f"{champ_f1:.4f}")
    decision.promote = decision.checks["beats_champion"] and decision.checks["f1_within_tolerance"]
    if decision.promote:
        decision.reasons.append(f"beats the champion by {gain:+.4f} accuracy, F1 {f1:.4f} vs {champ_f1:.4f}")
    return decision
