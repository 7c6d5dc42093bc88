"""`sentimentops <command> ...`: one console script; each stage module owns its flags (`main(argv) -> int`).

Modules are imported lazily so a stage image only needs its own extra installed.
"""
from __future__ import annotations

import importlib
import sys

STAGES = {
    "ingest": "sentimentops.steps.ingest",
    "validate": "sentimentops.steps.validate.cli",
    "version": "sentimentops.steps.version",
    "train": "sentimentops.steps.train.cli",
    "evaluate": "sentimentops.steps.evaluate",
    "register": "sentimentops.steps.register.cli",
    "serve": "sentimentops.steps.serve.server",
    "predict": "sentimentops.steps.core.client",
    "quickstart": "sentimentops.steps.quickstart",
    "drift": "sentimentops.steps.drift.cli",
    "rollout": "sentimentops.steps.rollout.cli",
}
# Orchestration commands live in workflows/ (which knows the stages only through this CLI).
WORKFLOW_COMMANDS = {"render", "pipeline", "check"}

USAGE = """usage: sentimentops <command> [flags]

stages:     ingest validate version train evaluate register
serving:    serve (the KServe predictor), predict (send reviews to a running server)
demo:       quickstart (the main job: the whole DAG locally, then a served prediction)
workflows:  render [--check] (write the Argo YAML), pipeline run ... (run the rendered DAG locally),
            check FILE... (strict schema checks of manifests)
Run `sentimentops <command> --help` for a command's flags."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        return int(importlib.import_module(STAGES[command]).main(rest) or 0)
    if command in WORKFLOW_COMMANDS:
        from sentimentops.workflows.cli import main as workflows_main

        # `pipeline run ...` -> `run ...`; `render ...` stays as is.
        return int(workflows_main(rest if command == "pipeline" else argv) or 0)
    print(f"sentimentops: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
