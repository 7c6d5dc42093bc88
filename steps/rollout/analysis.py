"""Canary analysis: PromQL over Prometheus' HTTP API, stable against canary, selected by the `model_version` label.

Where the label comes from: in the cluster the rollout patch puts the pod label `sentimentops.io/model-version` on
each predictor and the ServiceMonitor/PodMonitor relabels it to `model_version`; locally the scrape config sets it
as a target label. Errors are 5xx answers counted in `sentiment_requests_total{status}` (docs/metrics.md): a
client's 4xx mistake is not the model's fault. The window is the analysis interval, or the canary's whole life
for the final verdict.

Quality: `sentiment_feedback_total{correct}` counts the labels each predictor received through POST /v1/feedback
(selected by `model_version` like the rest); `sentiment_mirror_total{stable, canary, agree}` is the local router's
count of mirrored requests (steps/rollout/router.py), labelled with the two versions it compared. KServe mirrors
nothing, so in the cluster the mirror series does not exist and agreement is no data.
"""
from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from sentimentops.steps.rollout.policy import Observation, Side

# The router's counter of mirrored comparisons (exported as <name>_total), labels stable, canary (the two model
# versions) and agree ("true" | "false"): one definition for the router that counts and the analysis that reads.
MIRROR_METRIC = "sentiment_mirror"


class PrometheusError(RuntimeError):
    """Prometheus could not be queried or answered an error: the analysis cannot judge, and says so."""


def _matchers(label: str, version: str, extra: dict[str, str], more: str = "") -> str:
    parts = [f'{label}="{version}"'] + [f'{k}="{v}"' for k, v in sorted(extra.items())]
    return "{" + ",".join(parts) + (f",{more}" if more else "") + "}"


def _duration(seconds: float) -> str:
    return f"{max(1, math.ceil(seconds))}s"


def queries(version: str, window_s: float, *, label: str = "model_version",
            extra: dict[str, str] | None = None) -> dict[str, str]:
    """The PromQL for one deployment (one model version) over a window."""
    extra, w = extra or {}, _duration(window_s)
    sel = _matchers(label, version, extra)
    # what counts against the service, as in the recording rules: server errors and load shed (429)
    errors = _matchers(label, version, extra, 'status=~"5..|429"')
    correct = _matchers(label, version, extra, 'correct="true"')
    return {
        "requests": f"sum(increase(sentiment_requests_total{sel}[{w}]))",
        "errors": f"sum(increase(sentiment_requests_total{errors}[{w}]))",
        "p99_s": f"histogram_quantile(0.99, sum by (le) (rate(sentiment_request_duration_seconds_bucket{sel}[{w}])))",
        "psi": f"max(max_over_time(sentiment_drift_psi{sel}[{w}]))",
        "feedback_total": f"sum(increase(sentiment_feedback_total{sel}[{w}]))",
        "feedback_correct": f"sum(increase(sentiment_feedback_total{correct}[{w}]))",
    }


def mirror_queries(stable: str, canary: str, window_s: float, *,
                   extra: dict[str, str] | None = None) -> dict[str, str]:
    """The router's mirrored comparisons of these two versions over a window: all of them, and those that agreed."""
    w = _duration(window_s)
    base = {**(extra or {}), "stable": stable, "canary": canary}
    sel = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(base.items())) + "}"
    agreed = sel[:-1] + ',agree="true"}'
    return {"mirrored_total": f"sum(increase({MIRROR_METRIC}_total{sel}[{w}]))",
            "mirrored_agree": f"sum(increase({MIRROR_METRIC}_total{agreed}[{w}]))"}


@dataclass
class Prometheus:
    """The instant-query endpoint, nothing else (urllib: no client library for one GET)."""

    url: str
    timeout_s: float = 10.0

    def query(self, expr: str, at: float | None = None) -> float | None:
        """A scalar from an instant vector query: the single sample's value, None when the vector is empty."""
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        request = f"{self.url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                body = json.load(answer)
        except (OSError, ValueError) as err:
            raise PrometheusError(f"{self.url}: {err}") from err
        if body.get("status") != "success":
            raise PrometheusError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result = body["data"]["result"]
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr}: expected one series, got {len(result)}")
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None


@dataclass
class Probe:
    """Observes stable and canary (two model versions) in one Prometheus."""

    prometheus: Prometheus
    label: str = "model_version"
    extra: dict[str, str] = field(default_factory=dict)  # e.g. {"namespace": "sentimentops"}

    def side(self, version: str, window_s: float, *, psi: bool = False, at: float | None = None
             ) -> tuple[Side, float | None]:
        """One deployment's traffic, errors, p99 and feedback labels; its drift PSI too when asked (only the
        canary's is judged)."""
        q = queries(version, window_s, label=self.label, extra=self.extra)
        values = {name: self.prometheus.query(expr, at) for name, expr in q.items() if psi or name != "psi"}
        side = Side(requests=values["requests"] or 0.0, errors=values["errors"] or 0.0, p99_s=values["p99_s"],
                    feedback_correct=values["feedback_correct"] or 0.0,
                    feedback_total=values["feedback_total"] or 0.0)
        return side, values.get("psi")

    def mirrored(self, stable: str, canary: str, window_s: float, at: float | None = None) -> tuple[float, float]:
        """(agreed, compared) mirrored requests of these two versions; (0, 0) where nothing mirrors (KServe)."""
        q = mirror_queries(stable, canary, window_s, extra=self.extra)
        return (self.prometheus.query(q["mirrored_agree"], at) or 0.0,
                self.prometheus.query(q["mirrored_total"], at) or 0.0)

    def observe(self, stable: str, canary: str, *, window_s: float, elapsed_s: float) -> Observation:
        # Every query at one instant: increase() extrapolates over the samples in its window, and a scrape landing
        # between two queries would give a ratio's numerator and denominator different windows.
        at = time.time()
        stable_side, _ = self.side(stable, window_s, at=at)
        canary_side, psi = self.side(canary, window_s, psi=True, at=at)
        agree, total = self.mirrored(stable, canary, window_s, at)
        return Observation(stable=stable_side, canary=canary_side, elapsed_s=elapsed_s, window_s=window_s,
                           canary_psi=psi, mirrored_agree=agree, mirrored_total=total)
