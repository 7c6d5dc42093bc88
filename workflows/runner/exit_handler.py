"""The variables Argo sets for an exit handler (`onExit`), computed from the local run's records the way the
workflow controller computes them (workflow/controller/operator.go, `operate`), so a handler reads the same text
on a laptop as in the cluster:

  workflow.status    Succeeded | Failed | Error: the entry DAG's phase (a skipped entry counts as Succeeded)
  workflow.failures  every node that Failed or Errored as a JSON list of {displayName, message, templateName, phase,
                     podName, finishedAt}, then Go's strconv.Quote of that text ("so that the escaped quotes are not
                     removed during parameter substitution"): the argument a handler receives is a JSON *string*
                     holding the JSON list, `"null"` inside it when nothing failed (Go marshals an empty slice so)
  workflow.duration  seconds since the workflow started, printed with Go's %f (`12.345678`)
  workflow.namespace "local" (there is no namespace here)

Locally a node has no pod: podName is empty, and the message names the task's log file instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

FAILED = ("Failed", "Error")
NAMESPACE = "local"


@dataclass(frozen=True)
class FailedNode:
    path: str  # task path in the run (`rollout/analyse`)
    template: str
    phase: str
    message: str
    finished: str | None  # ISO 8601 with +00:00, as the run records it


def workflow_status(failed_phase: str | None) -> str:
    """The entry DAG's phase: the phase of the node that failed it, else Succeeded."""
    return failed_phase if failed_phase in FAILED else "Succeeded"


def _rfc3339(timestamp: str | None) -> str | None:
    """`2026-11-30T14:00:00+00:00` -> `2026-11-30T14:00:00Z` (metav1.Time's JSON form)."""
    if not timestamp:
        return None
    return timestamp[:-6] + "Z" if timestamp.endswith("+00:00") else timestamp


def failures_value(nodes: Iterable[FailedNode]) -> str:
    """{{workflow.failures}} as Argo substitutes it."""
    listed = [{"displayName": n.path.rsplit("/", 1)[-1], "message": n.message, "templateName": n.template,
               "phase": n.phase, "podName": "", "finishedAt": _rfc3339(n.finished)} for n in nodes]
    text = json.dumps(listed or None, separators=(",", ":"))
    return json.dumps(text)  # strconv.Quote: the same escapes as JSON for this (ASCII-escaped) text


def duration_value(seconds: float) -> str:
    return f"{seconds:.6f}"
