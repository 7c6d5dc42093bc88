"""`sentimentops <command> ...`: one console script; each stage module owns its flags (`main(argv) -> int`).

Modules are imported lazily so a stage image only needs its own extra installed. The exit status follows the one
table in sentimentops.steps.core.errors (an unknown command is a usage error: 2).
"""
from __future__ import annotations

import importlib
import sys

from sentimentops.steps.core.errors import UsageError, run_stage
from sentimentops.steps.core.logs import emit

STAGES = {
    "ingest": "sentimentops.steps.ingest",
    "validate": "sentimentops.steps.validate.cli",
    "version": "sentimentops.steps.version",
    "train": "sentimentops.steps.train.cli",
    "evaluate": "sentimentops.steps.evaluate.cli",
    "register": "sentimentops.steps.register.cli",
    "serve": "sentimentops.steps.serve.server",
    "predict": "sentimentops.steps.core.client",
    "quickstart": "sentimentops.steps.quickstart",
    "drift": "sentimentops.steps.drift.cli",
    "rollout": "sentimentops.steps.rollout.cli",
    "notify": "sentimentops.steps.notify",
    "lineage": "sentimentops.steps.lineage.cli",
    "data": "sentimentops.steps.lineage.data",
    "feedback": "sentimentops.steps.feedback.cli",
    "score": "sentimentops.steps.score.cli",
}
# Orchestration commands live in workflows/ (which knows the stages only through this CLI).
WORKFLOW_COMMANDS = {"render", "pipeline", "check"}

USAGE = """usage: sentimentops <command> [flags]

stages:     ingest validate version train evaluate register
serving:    serve (the KServe predictor), predict (send reviews to a running server)
demo:       quickstart (the main job: the whole DAG locally, then a served prediction)
delivery:   rollout (the canary), drift (the monitor), notify (a workflow's outcome to Slack: the exit handler)
lineage:    lineage (a model version's run, metrics, dataset, commit, images), data pull (restore its dataset)
production: feedback import (labels from a labelling tool), score (batch scoring with the champion)
workflows:  render [--check] (write the Argo YAML), pipeline run ... (run the rendered DAG locally),
            check FILE... (strict schema checks of manifests)
Run `sentimentops <command> --help` for a command's flags."""


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        emit(USAGE, stream=None if argv else sys.stderr)
        if not argv:
            raise UsageError("no command given")
        return 0
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        return int(importlib.import_module(STAGES[command]).main(rest) or 0)
    if command in WORKFLOW_COMMANDS:
        from sentimentops.workflows.cli import main as workflows_main

        # `pipeline run ...` -> `run ...`; `render ...` stays as is.
        return int(workflows_main(rest if command == "pipeline" else argv) or 0)
    emit(USAGE, stream=sys.stderr)
    raise UsageError(f"unknown command {command!r} (commands: {', '.join([*STAGES, *sorted(WORKFLOW_COMMANDS)])})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_stage("sentimentops", lambda: _dispatch(argv))


if __name__ == "__main__":
    sys.exit(main())
