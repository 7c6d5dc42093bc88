"""The canary policy: a pure judgement of what Prometheus saw, stable against canary, and the decision over a soak.

The runbook's rules (issue 5): roll back when the canary's 5xx error ratio is more than 50% above stable's, its p99
more than 100 ms above stable's, or its drift PSI above 0.3 within the first hour; promote when the soak completes
with every check passing. Two guards keep noise from deciding:
- an absolute error floor (1%): one error among a quiet window's 40 requests is 2.5%, "infinitely" above a clean
  stable, yet no evidence of a bad model;
- a minimum number of canary requests before a check is judged at all (a p99 of 5 requests is their maximum).
Early rollback needs `failure_limit` consecutive failing analyses (Flagger's `threshold`, Argo Rollouts'
`failureLimit`), so one unlucky window cannot end a rollout; the final verdict looks at the whole soak.

Errors and latency cannot see a model that is fast and wrong; two quality checks can (issue 15):
- feedback accuracy: the share of labelled requests (POST /v1/feedback, `sentiment_feedback_total{correct}`) each
  version answered right, canary against stable, once each side has `min_feedback_labels` labels in the window;
- agreement: the share of mirrored requests (the local router sends a share of requests to both deployments) on
  which canary and stable gave the same label, once `min_mirrored` such requests were compared.
Where that evidence is missing the check is no_data and does not block, unless `require_quality` is set: then a
soak that ends without a judged quality check is not promoted ("not proven on quality").
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["pass", "fail", "no_data"]
Action = Literal["continue", "promote", "rollback"]


class RolloutPolicy(BaseModel):
    """Thresholds of the canary comparison (defaults: the runbook)."""

    max_error_ratio_increase: float = Field(0.5, ge=0, description="Canary 5xx+429 ratio may exceed stable's by this "
                                            "fraction (0.5: more than 50% above stable fails).")
    min_error_ratio: float = Field(0.01, ge=0, le=1, description="Absolute floor: a canary 5xx+429 ratio at or below "
                                   "this never fails (one error in a quiet window is not evidence).")
    max_p99_increase_s: float = Field(0.1, ge=0, description="Canary p99 may exceed stable's by this many seconds.")
    max_psi: float = Field(0.3, ge=0, description="Canary drift PSI above this fails...")
    psi_window_s: float = Field(3600, ge=0, description="... while the canary is younger than this (the first hour).")
    min_canary_requests: int = Field(20, ge=1, description="Canary requests an analysis needs before latency and "
                                     "errors are judged; a completed soak with fewer rolls back.")
    failure_limit: int = Field(2, ge=1, description="Consecutive failing analyses that roll back early.")
    # Feedback accuracy over N labels has a binomial standard error sqrt(p(1-p)/N): 0.018 at N=400 and p=0.85, so
    # the difference of two such sides has 0.025 and a 5-point drop is 2 standard errors: a canary as good as
    # stable fails about 2% of soaks, one 10 points worse passes about 2%. At p=0.5 (the worst case) the
    # difference's error is 0.035 and the same rule is 1.4 errors wide: collect more labels there, or widen the drop.
    min_feedback_labels: int = Field(400, ge=1, description="Feedback labels each side needs in a window before "
                                     "feedback accuracy is judged (binomial error sqrt(p(1-p)/N): 0.018 at 400).")
    max_feedback_accuracy_drop: float = Field(0.05, ge=0, le=1, description="Canary feedback accuracy may be at "
                                              "most this below stable's (0.05: 5 points, 2 standard errors of the "
                                              "difference at 400 labels a side).")
    # Agreement: a retrained model is meant to change answers (the ones stable gets wrong on drifted traffic), so a
    # high bar would roll back the very model a retrain exists for: a canary right everywhere agrees with a
    # 70%-accurate stable on 70% of requests. What it catches is a broken canary: random, constant or inverted
    # answers agree with any stable on about half of balanced traffic or less; 0.6 is 2.8 standard errors
    # (sqrt(0.25/200) = 0.035) above 0.5 at 200 mirrored requests.
    min_mirrored: int = Field(200, ge=1, description="Mirrored requests compared in a window before agreement is "
                              "judged.")
    min_agreement: float = Field(0.6, ge=0, le=1, description="Canary and stable must give the same label on at "
                                 "least this share of mirrored requests (0.5 is what a random or constant model "
                                 "gets on balanced traffic).")
    require_quality: bool = Field(False, description="true: a soak whose quality checks (feedback_accuracy, "
                                  "agreement) all lack data is not promoted; false: quality is judged where the "
                                  "evidence exists.")


@dataclass(frozen=True)
class Side:
    """One deployment's numbers over an analysis window (None: Prometheus had no data)."""

    requests: float = 0.0
    errors: float = 0.0  # 5xx answers
    p99_s: float | None = None
    feedback_correct: float = 0.0  # labelled requests this version answered right
    feedback_total: float = 0.0  # labelled requests (POST /v1/feedback) for this version

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def feedback_accuracy(self) -> float | None:
        return self.feedback_correct / self.feedback_total if self.feedback_total > 0 else None


@dataclass(frozen=True)
class Observation:
    """Stable against canary over `window_s` seconds, `elapsed_s` after the canary started."""

    stable: Side
    canary: Side
    elapsed_s: float
    window_s: float
    canary_psi: float | None = None
    mirrored_agree: float = 0.0  # mirrored requests on which canary and stable gave the same label
    mirrored_total: float = 0.0  # mirrored requests whose two answers were compared

    @property
    def agreement(self) -> float | None:
        return self.mirrored_agree / self.mirrored_total if self.mirrored_total > 0 else None


@dataclass(frozen=True)
class Check:
    name: str  # error_ratio | latency_p99 | drift_psi | feedback_accuracy | agreement
    status: Status
    value: float | None
    limit: float | None
    detail: str


@dataclass(frozen=True)
class Judgement:
    observation: Observation
    checks: tuple[Check, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "fail")

    def to_dict(self) -> dict:
        obs = self.observation
        return {"elapsed_s": round(obs.elapsed_s, 1), "window_s": round(obs.window_s, 1),
                "stable": _side(obs.stable), "canary": _side(obs.canary),
                "canary_psi": _round(obs.canary_psi),
                "mirrored": {"agree": round(obs.mirrored_agree, 1), "total": round(obs.mirrored_total, 1),
                             "agreement": _round(obs.agreement)},
                "checks": [{**asdict(c), "value": _round(c.value), "limit": _round(c.limit)} for c in self.checks]}


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    judgement: Judgement | None = None
    history: list[dict] = field(default_factory=list)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _side(side: Side) -> dict:
    return {"requests": round(side.requests, 1), "errors": round(side.errors, 1),
            "error_ratio": _round(side.error_ratio), "p99_s": _round(side.p99_s),
            "feedback_correct": round(side.feedback_correct, 1), "feedback_total": round(side.feedback_total, 1),
            "feedback_accuracy": _round(side.feedback_accuracy)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def judge(obs: Observation, policy: RolloutPolicy) -> Judgement:
    """Every check, passed or not, with the value and the limit it was held to."""
    canary, stable = obs.canary, obs.stable
    checks: list[Check] = []
    enough = canary.requests >= policy.min_canary_requests
    few = f"{canary.requests:.0f} canary requests < {policy.min_canary_requests}"
    # Error ratio: more than (1 + increase) x stable's AND above the absolute floor.
    ratio = canary.error_ratio
    stable_ratio = stable.error_ratio or 0.0  # a stable with no traffic counts as clean
    limit = max(stable_ratio * (1 + policy.max_error_ratio_increase), policy.min_error_ratio)
    if not enough or ratio is None:
        checks.append(Check("error_ratio", "no_data", ratio, limit, few))
    else:
        bad = ratio > limit
        checks.append(Check("error_ratio", "fail" if bad else "pass", ratio, limit,
                            f"canary 5xx {ratio:.2%} {'>' if bad else '<='} {limit:.2%} "
                            f"(stable {stable_ratio:.2%} x {1 + policy.max_error_ratio_increase:g}, floor "
                            f"{policy.min_error_ratio:.0%})"))
    # Latency: canary p99 - stable p99 above the allowed increase.
    c99, s99 = _finite(canary.p99_s), _finite(stable.p99_s)
    if not enough or c99 is None or s99 is None:
        checks.append(Check("latency_p99", "no_data", None if c99 is None or s99 is None else c99 - s99,
                            policy.max_p99_increase_s, few if not enough else "no p99 for one side"))
    else:
        diff = c99 - s99
        bad = diff > policy.max_p99_increase_s
        checks.append(Check("latency_p99", "fail" if bad else "pass", diff, policy.max_p99_increase_s,
                            f"canary p99 {c99 * 1000:.0f} ms - stable {s99 * 1000:.0f} ms = {diff * 1000:+.0f} ms "
                            f"{'>' if bad else '<='} {policy.max_p99_increase_s * 1000:.0f} ms"))
    # Drift: judged within the first hour only, and whatever the traffic (PSI is the monitor's own window).
    psi = _finite(obs.canary_psi)
    if obs.elapsed_s > policy.psi_window_s:
        checks.append(Check("drift_psi", "no_data", psi, policy.max_psi,
                            f"not judged after the first {policy.psi_window_s:.0f} s"))
    elif psi is None:
        checks.append(Check("drift_psi", "no_data", None, policy.max_psi, "no sentiment_drift_psi for the canary"))
    else:
        bad = psi > policy.max_psi
        checks.append(Check("drift_psi", "fail" if bad else "pass", psi, policy.max_psi,
                            f"canary PSI {psi:.3f} {'>' if bad else '<='} {policy.max_psi:g}"))
    checks.append(_feedback_check(obs, policy))
    checks.append(_agreement_check(obs, policy))
    return Judgement(obs, tuple(checks))


QUALITY_CHECKS = ("feedback_accuracy", "agreement")


def _feedback_check(obs: Observation, policy: RolloutPolicy) -> Check:
    """Canary feedback accuracy against stable's, both over the window's labels; the value is the drop."""
    canary, stable = obs.canary, obs.stable
    c_acc, s_acc = canary.feedback_accuracy, stable.feedback_accuracy
    limit = policy.max_feedback_accuracy_drop
    few = min(canary.feedback_total, stable.feedback_total) < policy.min_feedback_labels
    if few or c_acc is None or s_acc is None:
        return Check("feedback_accuracy", "no_data", None if c_acc is None or s_acc is None else s_acc - c_acc,
                     limit, f"feedback labels: canary {canary.feedback_total:.0f}, stable "
                     f"{stable.feedback_total:.0f} (< {policy.min_feedback_labels} a side)")
    drop = s_acc - c_acc
    bad = drop > limit
    return Check("feedback_accuracy", "fail" if bad else "pass", drop, limit,
                 f"feedback accuracy canary {c_acc:.1%} of {canary.feedback_total:.0f} labels vs stable "
                 f"{s_acc:.1%} of {stable.feedback_total:.0f}: drop {drop * 100:+.1f} points "
                 f"{'>' if bad else '<='} {limit * 100:g}")


def _agreement_check(obs: Observation, policy: RolloutPolicy) -> Check:
    """The share of mirrored requests on which canary and stable gave the same label."""
    rate, limit = obs.agreement, policy.min_agreement
    if rate is None or obs.mirrored_total < policy.min_mirrored:
        return Check("agreement", "no_data", rate, limit,
                     f"{obs.mirrored_total:.0f} mirrored requests compared < {policy.min_mirrored}")
    bad = rate < limit
    return Check("agreement", "fail" if bad else "pass", rate, limit,
                 f"canary agrees with stable on {rate:.1%} of {obs.mirrored_total:.0f} mirrored requests "
                 f"{'<' if bad else '>='} {limit:.0%}")


def _failures(j: Judgement) -> str:
    return "; ".join(c.detail for c in j.failed)


def decide(history: list[Judgement], policy: RolloutPolicy, *, soak_s: float,
           overall: Judgement | None = None) -> Verdict:
    """history: the interval analyses so far (oldest first); overall: the whole soak judged at once (final).

    continue while the soak runs; rollback early after `failure_limit` consecutive failing analyses; at the end
    of the soak promote only if the whole soak passes every check with enough canary traffic.
    """
    trail = [j.to_dict() for j in history]
    recent = history[-policy.failure_limit:]
    if len(recent) == policy.failure_limit and all(j.failed for j in recent):
        last = recent[-1]
        return Verdict("rollback", f"{policy.failure_limit} consecutive failing analyses at "
                       f"{last.observation.elapsed_s:.0f} s: {_failures(last)}", last, trail)
    latest = overall or (history[-1] if history else None)
    if latest is None or latest.observation.elapsed_s < soak_s:
        return Verdict("continue", "soaking", latest, trail)
    if latest.observation.canary.requests < policy.min_canary_requests:
        return Verdict("rollback", f"insufficient canary traffic: {latest.observation.canary.requests:.0f} "
                       f"requests over the {soak_s:.0f} s soak < {policy.min_canary_requests}; the canary was not "
                       "proven", latest, trail)
    if latest.failed:
        return Verdict("rollback", f"soak of {soak_s:.0f} s failed: {_failures(latest)}", latest, trail)
    quality = [c for c in latest.checks if c.name in QUALITY_CHECKS]
    judged = [c for c in quality if c.status != "no_data"]
    if policy.require_quality and not judged:
        return Verdict("rollback", f"not proven on quality over the {soak_s:.0f} s soak: "
                       + "; ".join(c.detail for c in quality), latest, trail)
    passed = "; ".join(c.detail for c in latest.checks if c.status == "pass")
    unjudged = "; ".join(f"{c.name} not judged ({c.detail})" for c in quality if c.status == "no_data")
    return Verdict("promote", f"soak of {soak_s:.0f} s passed: {passed}" + (f"; {unjudged}" if unjudged else ""),
                   latest, trail)
