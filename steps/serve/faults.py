"""Fault injection for canary tests: make THIS predictor misbehave so that its own metrics show it.

Off by default; read once from the environment when the app is created:
  SENTIMENTOPS_SERVE_FAULT_LATENCY_MS   added to every prediction request (e.g. 150)
  SENTIMENTOPS_SERVE_FAULT_ERROR_RATE   share of prediction requests answered with an error (e.g. 0.05)
  SENTIMENTOPS_SERVE_FAULT_STATUS       500 (default, the status table's `internal`) or 503 (`overloaded`)
  SENTIMENTOPS_SERVE_FAULT_SEED         seed of the RNG choosing which requests fail (default 0)
The faults happen inside the request handler, so they are timed and counted in sentiment_request_duration_seconds,
sentiment_requests_total and sentiment_errors_total like any real slowness or failure; the rollout tests
(tests/integration/test_rollout_local.py) start a canary with them and expect it rolled back.
"""
from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from sentimentops.steps.serve.errors import Overloaded

PREFIX = "SENTIMENTOPS_SERVE_FAULT_"


class InjectedFault(RuntimeError):
    """An injected server failure: not in the status table, so it is answered 500 `internal` like any bug."""


@dataclass
class Faults:
    latency_s: float = 0.0
    error_rate: float = 0.0
    status: int = 500
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0 or self.latency_s < 0 or self.status not in (500, 503):
            raise ValueError(f"bad fault settings: {self}")
        self.rng = random.Random(self.seed)

    def __bool__(self) -> bool:
        return self.latency_s > 0 or self.error_rate > 0

    async def apply(self) -> None:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            raise (Overloaded("injected fault (SENTIMENTOPS_SERVE_FAULT_STATUS=503)") if self.status == 503
                   else InjectedFault("injected fault (SENTIMENTOPS_SERVE_FAULT_ERROR_RATE)"))


def from_env(env: Mapping[str, str] | None = None) -> Faults:
    env = os.environ if env is None else env
    return Faults(latency_s=float(env.get(PREFIX + "LATENCY_MS", 0)) / 1000,
                  error_rate=float(env.get(PREFIX + "ERROR_RATE", 0)),
                  status=int(env.get(PREFIX + "STATUS", 500)), seed=int(env.get(PREFIX + "SEED", 0)))
