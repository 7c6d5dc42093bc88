"""The promotion policy: a pure function deciding whether a challenger becomes champion, and why.

`champion` moves only when the challenger beats the configured baseline and the current champion by the configured
margins, on metrics measured on the same held-out test rows (sentimentops.steps.evaluate). Every check is recorded, passed or
not, so the decision can be read back from the model registry.

Two pieces of evidence can gate too (issue 14), each off unless the profile sets it: the classical TF-IDF +
logistic-regression baseline fitted and scored by evaluate on the same test rows (a transformer that cannot beat it
is not worth its serving cost), and the behavioural suite's pass rate. Off, each is still reported in the reasons
when measured; on, a missing measurement refuses the promotion (never promote on evidence that is not there).

The production slice (issue 15: ingest's held-out recent feedback, scored by evaluate for both models): where both
models have an accuracy on it and the slice holds at least `min_production_rows` rows, the champion is replaced only
when neither the base test split nor the slice regresses beyond its margin (`test_not_worse`,
`production_not_worse`) and the gain on EITHER reaches min_gain_over_champion: a retrain on drifted traffic is meant
to gain on the traffic while keeping the corpus, not to gain on both. Without a slice the decision is the one above.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from sentimentops.steps.core.production import PRODUCTION_MIN_ROWS

# The evaluate manifest's flat metrics these two come from: keys of the evaluate run itself, not per model, so they
# are read without the `test_` / `champion_test_` prefix.
TFIDF_ACCURACY_KEY = "tfidf_test_accuracy"
BEHAVIOUR_PASS_RATE_KEY = "behaviour_pass_rate"
# The production slice's (evaluate: production_summary): `production_accuracy` for the challenger (a registry
# version's own tag too), `champion_production_accuracy` for the champion; the rows, for both.
PRODUCTION_ACCURACY_KEY = "production_accuracy"
PRODUCTION_ROWS_KEY = "production_rows"


class PolicySettings(BaseModel):
    # A profile sets the policy as a nested mapping (register: policy: ...): a misspelt key (`min_behavior_...`)
    # must fail the step (exit 2) rather than silently leave a gate off.
    model_config = ConfigDict(extra="forbid")

    baseline_accuracy: float = Field(0.80, ge=0, le=1, description="Accuracy a model must reach to serve at all.")
    min_gain_over_baseline: float = Field(0.0, ge=0, description="Extra accuracy required above the baseline.")
    min_gain_over_champion: float = Field(0.0, ge=-1, le=1,
                                          description="Accuracy gain over the champion required to replace it.")
    max_f1_drop: float = Field(0.01, ge=0, description="F1 may fall at most this much below the champion's.")
    min_gain_over_tfidf: float | None = Field(
        None, ge=-1, le=1, description="Accuracy the challenger must gain over the TF-IDF baseline scored on the "
        "same test rows; None: the baseline is reported, not gated.")
    min_behaviour_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Overall pass rate (0..1) the behavioural suite must reach; None: reported, "
        "not gated.")
    max_test_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="With a production slice: test accuracy may fall at most this much below the "
        "champion's (the gain may come from the slice alone).")
    max_production_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="With a production slice: its accuracy may fall at most this much below the "
        "champion's.")
    min_production_rows: int = Field(
        PRODUCTION_MIN_ROWS, ge=1, description="A production slice smaller than this is reported, not judged (at 50 "
        "rows one answer moves accuracy 2 points).")


@dataclass(frozen=True)
class EvalMetrics:
    """What the policy compares, for one model on the held-out test rows (evaluate's `test_*` metrics).

    `baseline_accuracy` is the TF-IDF baseline's accuracy on the same rows (not PolicySettings.baseline_accuracy,
    the fixed floor) and `behaviour_pass_rate` the behavioural suite's overall pass rate; both matter for the
    challenger only. NaN marks a metric that is missing or could not be measured: the policy treats it as such
    (never as 0)."""

    accuracy: float
    f1: float
    roc_auc: float = math.nan
    baseline_accuracy: float = math.nan
    behaviour_pass_rate: float = math.nan
    production_accuracy: float = math.nan
    production_rows: float = math.nan

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], prefix: str = "") -> EvalMetrics:
        """From `{prefix}accuracy`, `{prefix}f1`, `{prefix}roc_auc` (an evaluate manifest's metrics with prefix
        `test_`, a registry version's tags), the unprefixed `tfidf_test_accuracy`, `behaviour_pass_rate`,
        `production_rows`, and the production slice's accuracy under the same prefix with `test_` read as
        `production_` (`production_accuracy`, `champion_production_accuracy`); a missing or non-numeric value is
        NaN."""

        def number(key: str) -> float:
            value = values.get(key)
            try:
                return float(value) if value is not None else math.nan  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return math.nan

        production = prefix.removesuffix("test_") + "production_"
        return cls(accuracy=number(prefix + "accuracy"), f1=number(prefix + "f1"),
                   roc_auc=number(prefix + "roc_auc"), baseline_accuracy=number(TFIDF_ACCURACY_KEY),
                   behaviour_pass_rate=number(BEHAVIOUR_PASS_RATE_KEY),
                   production_accuracy=number(production + "accuracy"), production_rows=number(PRODUCTION_ROWS_KEY))


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


def _evidence_gate(decision: Decision, *, check: str, setting: str, label: str, evidence: float, on: bool,
                   value: float, need: float, passed: str, failed: str) -> bool:
    """One evidence gate: off, its evidence is reported only; on, a missing measurement or `value` under `need`
    refuses (False) with its reason, else the pass is recorded."""
    if not on:
        if _finite(evidence):
            decision.reasons.append(f"{label} {evidence:.4f} (reported, not gated)")
        return True
    if not _finite(evidence):
        decision.checks[check] = False
        decision.reasons.append(f"the {label} is missing; the gate {setting} is on, so nothing is promoted without it")
        return False
    decision.checks[check] = value + EPS >= need
    decision.reasons.append(passed if decision.checks[check] else failed)
    return decision.checks[check]


def _tfidf_gate(challenger: EvalMetrics, policy: PolicySettings, decision: Decision) -> bool:
    """The TF-IDF baseline gate: the challenger's accuracy at least the baseline's + min_gain_over_tfidf."""
    acc, tfidf, margin = challenger.accuracy, challenger.baseline_accuracy, policy.min_gain_over_tfidf
    m = margin or 0.0
    return _evidence_gate(decision, check="beats_tfidf_baseline", setting="min_gain_over_tfidf",
                          label="TF-IDF baseline accuracy" if margin is not None and not _finite(tfidf)
                          else "TF-IDF baseline", evidence=tfidf, on=margin is not None, value=acc, need=tfidf + m,
                          passed=f"accuracy {acc:.4f} >= TF-IDF baseline {tfidf:.4f} + margin {m:.4f}",
                          failed=f"accuracy {acc:.4f} below the TF-IDF baseline {tfidf:.4f} + margin {m:.4f}")


def _behaviour_gate(challenger: EvalMetrics, policy: PolicySettings, decision: Decision) -> bool:
    """The behavioural suite gate: the suite's pass rate at least min_behaviour_pass_rate."""
    rate, need = challenger.behaviour_pass_rate, policy.min_behaviour_pass_rate
    return _evidence_gate(decision, check="behaviour_pass_rate", setting="min_behaviour_pass_rate",
                          label="behaviour pass rate", evidence=rate, on=need is not None, value=rate,
                          need=need or 0.0, passed=f"behaviour pass rate {rate:.4f} >= {need or 0.0:.4f}",
                          failed=f"behaviour pass rate {rate:.4f} below the required {need or 0.0:.4f}")


def decide(challenger: EvalMetrics, champion: EvalMetrics | None, policy: PolicySettings,
           *, challenger_is_champion: bool = False) -> Decision:
    """challenger/champion: metrics on the same test rows; champion None if there is none.

    Order: metrics valid, already champion, the fixed floor, the TF-IDF baseline, the behavioural suite, then the
    champion; the first refusal ends the decision (its reason says which evidence failed)."""
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
    if not _tfidf_gate(challenger, policy, decision) or not _behaviour_gate(challenger, policy, decision):
        return decision
    if champion is None:
        decision.promote = True
        decision.reasons.append("no champion yet")
        return decision
    champ_acc, champ_f1 = champion.accuracy, champion.f1
    if not _finite(champ_acc, champ_f1):
        decision.promote = True
        decision.reasons.append("the champion could not be scored on these test rows")
        return decision
    if _judges_production(challenger, champion, policy, decision):
        return _decide_with_production(challenger, champion, policy, decision)
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


def _judges_production(challenger: EvalMetrics, champion: EvalMetrics, policy: PolicySettings,
                       decision: Decision) -> bool:
    """Whether the production slice takes part: both accuracies measured and enough rows. A slice that is there but
    too small is said in the reasons (reported, not judged)."""
    if not _finite(challenger.production_accuracy, champion.production_accuracy):
        return False
    rows = challenger.production_rows
    if not _finite(rows) or rows < policy.min_production_rows:
        shown = "unknown" if not _finite(rows) else f"{rows:.0f}"
        decision.reasons.append(f"production slice of {shown} rows < min_production_rows "
                                f"{policy.min_production_rows}: reported, not judged (production accuracy "
                                f"{challenger.production_accuracy:.4f} vs {champion.production_accuracy:.4f})")
        return False
    return True


def _decide_with_production(challenger: EvalMetrics, champion: EvalMetrics, policy: PolicySettings,
                            decision: Decision) -> Decision:
    """The champion comparison on both the test split and the production slice (module docstring)."""
    acc, prod, f1 = challenger.accuracy, challenger.production_accuracy, challenger.f1
    champ_acc, champ_prod, champ_f1 = champion.accuracy, champion.production_accuracy, champion.f1
    test_gain, prod_gain = acc - champ_acc, prod - champ_prod
    checks = decision.checks
    checks["test_not_worse"] = acc + EPS >= champ_acc - policy.max_test_accuracy_drop
    checks["production_not_worse"] = prod + EPS >= champ_prod - policy.max_production_accuracy_drop
    checks["beats_champion"] = max(test_gain, prod_gain) + EPS >= policy.min_gain_over_champion
    # The test split may lose up to max_test_accuracy_drop of accuracy here, and F1 moves with it (a retrain that
    # shifts its class balance loses more F1 than accuracy): F1 gets that allowance on top of its own tolerance.
    f1_drop = policy.max_f1_drop + policy.max_test_accuracy_drop
    checks["f1_within_tolerance"] = f1 + EPS >= champ_f1 - f1_drop
    if not checks["test_not_worse"]:
        decision.reasons.append(f"test accuracy {acc:.4f} falls more than {policy.max_test_accuracy_drop:.4f} below "
                                f"the champion's {champ_acc:.4f}")
    if not checks["production_not_worse"]:
        decision.reasons.append(f"production accuracy {prod:.4f} falls more than "
                                f"{policy.max_production_accuracy_drop:.4f} below the champion's {champ_prod:.4f}")
    if not checks["beats_champion"]:
        decision.reasons.append(f"accuracy gain over the champion {test_gain:+.4f} on test, {prod_gain:+.4f} on "
                                f"production: neither reaches the required {policy.min_gain_over_champion:+.4f}")
    if not checks["f1_within_tolerance"]:
        decision.reasons.append(f"F1 {f1:.4f} falls more than {f1_drop:.4f} below the champion's "
                                f"{champ_f1:.4f}")
    decision.promote = all(checks[k] for k in ("test_not_worse", "production_not_worse", "beats_champion",
                                               "f1_within_tolerance"))
    if decision.promote:
        decision.reasons.append(f"beats the champion by {test_gain:+.4f} accuracy on test and {prod_gain:+.4f} on "
                                f"production ({challenger.production_rows:.0f} rows), F1 {f1:.4f} vs {champ_f1:.4f}")
    return decision
