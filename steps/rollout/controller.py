"""The rollout state machine: deploy canary -> wait ready -> analyse at an interval over the soak -> promote or
roll back. Each transition is recorded in the target's state before the next begins, so every command is
idempotent and a re-run after a crash anywhere resumes or completes consistently:

  (none) --deploy--> canary --analyse--> promoting --promote--> promoted      (champion moved)
                                      `-> rolling-back --rollback--> rolled-back (champion untouched)

A crash after the patch resumes the soak from the recorded start; a crash after the decision applies it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.rollout.analysis import Probe, PrometheusError
from sentimentops.steps.rollout.policy import RolloutPolicy, Verdict, decide, judge
from sentimentops.steps.rollout.registry import Registry
from sentimentops.steps.rollout.state import ACTIVE, FINAL, RolloutState, now_iso

log = get_logger("sentimentops.rollout")


class RolloutError(RuntimeError):
    """The rollout cannot proceed (no state to analyse, a decision that contradicts the requested action)."""


class Target(Protocol):
    kind: str

    def load_state(self) -> RolloutState | None: ...
    def save(self, state: RolloutState) -> None: ...
    def stable(self) -> tuple[str, str]: ...  # (model version, storage URI) serving now; "" when unknown
    def deploy(self, state: RolloutState) -> RolloutState: ...  # canary + state in one atomic step
    def ready(self) -> tuple[bool, str]: ...
    def promote(self, state: RolloutState) -> None: ...  # all traffic to the candidate + state, atomically
    def rollback(self, state: RolloutState) -> None: ...  # the previous revision restored + state, atomically
    def event(self, reason: str, message: str, warning: bool = False) -> None: ...
    def matchers(self) -> dict[str, str]: ...
    def soak(self, state: RolloutState) -> AbstractContextManager: ...  # local: the load generator


@dataclass(frozen=True)
class Timing:
    soak_s: float = 1800.0
    interval_s: float = 60.0
    ready_timeout_s: float = 600.0


@dataclass
class Controller:
    target: Target
    registry: Registry
    probe: Probe
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    timing: Timing = field(default_factory=Timing)
    canary_percent: int = 10
    sleep: Callable[[float], None] = time.sleep
    crash_hook: Callable[[str], None] = lambda point: None  # tests: raise at a named point, like a killed pod
    say: Callable[[str], None] = lambda line: log.info("rollout: %s", line)

    # ---- deploy ------------------------------------------------------------------------------------------------
    def deploy(self, ref: str) -> RolloutState:
        version, storage_uri = self.registry.resolve(ref)  # the version's `storage_uri` tag (register's)
        state = self.target.load_state()
        if state is not None and state.candidate_version == version and state.phase in ACTIVE + FINAL:
            self.say(f"version {version} is already {state.phase} (since {state.started}); nothing to deploy")
            return state
        if state is not None and state.phase in ACTIVE:
            # Another candidate is mid-rollout: it was never proven, so it goes back before this one starts.
            self.say(f"version {state.candidate_version} is still {state.phase}: rolling it back first")
            self._apply(state.with_phase("rolling-back", decision="rollback", decided=now_iso(),
                                         reason=f"superseded by version {version} before a decision"))
        stable_version, stable_uri = self.target.stable()
        stable_version = stable_version or self.registry.alias("champion") or ""
        state = RolloutState(candidate_version=version, candidate_uri=storage_uri,
                             previous_version=stable_version, previous_uri=stable_uri, phase="canary",
                             started=now_iso(), percent=self.canary_percent)
        if stable_version == version:
            state = state.with_phase("promoted", decision="promote", decided=state.started,
                                     reason=f"version {version} is already the stable version")
            self.target.save(state)
            self.say(state.reason)
            return state
        state = self.target.deploy(state)
        self.target.event("CanaryDeployed", f"model version {version} at {state.percent}% beside version "
                          f"{stable_version or '?'} ({state.candidate_uri})")
        self.say(f"deployed version {version} as a {state.percent}% canary beside version {stable_version}")
        self.crash_hook("deployed")
        return state

    # ---- analyse -----------------------------------------------------------------------------------------------
    def analyse(self) -> RolloutState:
        state = self._state()
        if state.phase != "canary":
            self.say(f"version {state.candidate_version}: decision already taken ({state.phase}: {state.reason})")
            return state
        verdict = self._wait_ready() or self._soak(state)
        evidence = {"decision": verdict.action, "reason": verdict.reason, "target": self.target.kind,
                    "candidate_version": state.candidate_version, "stable_version": state.previous_version,
                    "canary_percent": state.percent, "soak_s": self.timing.soak_s,
                    "interval_s": self.timing.interval_s, "policy": self.policy.model_dump(),
                    "final": verdict.judgement.to_dict() if verdict.judgement else None,
                    "analyses": verdict.history}
        elapsed = state.elapsed_s
        # Evidence first, then the state: the state never names a decision whose evidence is missing.
        self.registry.record(state.candidate_version, {
            "rollout.decision": verdict.action, "rollout.reason": verdict.reason, "rollout.target": self.target.kind,
            "rollout.decision_s": f"{elapsed:.1f}", "rollout.decided_at": now_iso(),
            "rollout.stable_version": state.previous_version, "rollout.canary_percent": str(state.percent),
        }, evidence, f"rollout/v{state.candidate_version}-{verdict.action}.json")
        state = state.with_phase("promoting" if verdict.action == "promote" else "rolling-back",
                                 decision=verdict.action, reason=verdict.reason, decided=now_iso())
        self.target.save(state)
        self.say(f"decision after {elapsed:.0f} s: {verdict.action}: {verdict.reason}")
        self.crash_hook("decided")
        return state

    def _wait_ready(self) -> Verdict | None:
        deadline = time.monotonic() + self.timing.ready_timeout_s
        while True:
            ok, why = self.target.ready()
            if ok:
                return None
            if time.monotonic() >= deadline:
                return Verdict("rollback", f"canary not ready after {self.timing.ready_timeout_s:.0f} s: {why}")
            self.sleep(min(2.0, self.timing.ready_timeout_s))

    def _soak(self, state: RolloutState) -> Verdict:
        history = []
        with self.target.soak(state):
            while True:
                remaining = self.timing.soak_s - state.elapsed_s
                if remaining > 0:
                    self.sleep(min(self.timing.interval_s, remaining))
                elapsed = state.elapsed_s
                final = elapsed >= self.timing.soak_s
                # The final verdict looks at the canary's whole life; interval analyses at the last interval.
                window = max(elapsed, 1.0) if final else self.timing.interval_s
                try:
                    obs = self.probe.observe(state.previous_version, state.candidate_version, window_s=window,
                                             elapsed_s=elapsed)
                except PrometheusError as err:
                    if not final:
                        self.say(f"analysis at {elapsed:.0f} s skipped: {err}")
                        continue
                    return Verdict("rollback", f"no metrics to judge the canary at the end of the soak: {err}")
                judgement = judge(obs, self.policy)
                if final:
                    verdict = decide(history, self.policy, soak_s=self.timing.soak_s, overall=judgement)
                else:
                    history.append(judgement)
                    verdict = decide(history, self.policy, soak_s=self.timing.soak_s)
                checks = ", ".join(f"{c.name} {c.status}" for c in judgement.checks)
                self.say(f"{'soak' if final else 'analysis'} at {elapsed:.0f} s over {window:.0f} s: canary "
                         f"{obs.canary.requests:.0f} req {obs.canary.errors:.0f} 5xx, stable "
                         f"{obs.stable.requests:.0f} req {obs.stable.errors:.0f} 5xx; feedback labels canary "
                         f"{obs.canary.feedback_total:.0f} stable {obs.stable.feedback_total:.0f}, "
                         f"{obs.mirrored_total:.0f} mirrored; {checks} -> {verdict.action}")
                if verdict.action != "continue":
                    return verdict

    # ---- promote / rollback ------------------------------------------------------------------------------------
    def promote(self) -> RolloutState:
        return self._finish("promote")

    def rollback(self, reason: str = "manual rollback") -> RolloutState:
        return self._finish("rollback", reason)

    def _finish(self, action: str, manual_reason: str = "") -> RolloutState:
        state = self._state()
        if state.phase == "canary":
            if action == "promote":
                raise RolloutError(f"version {state.candidate_version} has no decision yet: run analyse first")
            state = state.with_phase("rolling-back", decision="rollback", reason=manual_reason, decided=now_iso())
        if state.decision != action:
            raise RolloutError(f"version {state.candidate_version} was decided {state.decision!r} "
                               f"({state.reason}), not {action!r}")
        if state.phase in FINAL and self._recorded(state):  # a retried step: already done, say so only
            self.say(f"version {state.candidate_version} already {state.phase}")
            return state
        return self._apply(state)

    def _apply(self, state: RolloutState) -> RolloutState:
        """Applies the recorded decision; safe to repeat (each effect is idempotent)."""
        if state.decision == "promote":
            if state.phase != "promoted":
                state = state.with_phase("promoted")
                self.target.promote(state)
            self.registry.move_champion(state.candidate_version)
            self.registry.record(state.candidate_version, {"rollout.state": "promoted",
                                                           "rollout.champion": "moved", "rollout.applied_at": now_iso()})
            self.target.event("CanaryPromoted", f"model version {state.candidate_version} promoted: {state.reason}")
            self.say(f"promoted version {state.candidate_version}; champion -> {state.candidate_version}")
        else:
            if state.phase != "rolled-back":
                state = state.with_phase("rolled-back")
                self.target.rollback(state)
            self.registry.record(state.candidate_version, {
                "rollout.state": "rolled-back", "rollout.champion": "untouched", "rollout.applied_at": now_iso(),
                "rollout.decision": "rollback", "rollout.reason": state.reason})
            self.target.event("CanaryRolledBack", f"model version {state.candidate_version} rolled back, version "
                              f"{state.previous_version} restored: {state.reason}", warning=True)
            self.say(f"rolled back version {state.candidate_version}; version {state.previous_version} serves")
        return state

    # ---- all of it ---------------------------------------------------------------------------------------------
    def run(self, ref: str) -> RolloutState:
        state = self.deploy(ref)
        if state.phase == "canary":
            state = self.analyse()
        if state.phase in ("promoting", "rolling-back") or (state.phase in FINAL and not self._recorded(state)):
            state = self._apply(state)  # also completes a crash between the patch and the registry update
        return state

    def _recorded(self, state: RolloutState) -> bool:
        if state.decision == "promote":
            return self.registry.alias("champion") == state.candidate_version
        return self.registry.tags(state.candidate_version).get("rollout.state") == "rolled-back"

    def _state(self) -> RolloutState:
        state = self.target.load_state()
        if state is None:
            raise RolloutError("no rollout recorded on the target: run deploy first")
        return state
