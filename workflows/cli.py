"""`sentimentops render|run|pipeline|check`: thin argument parsing over sentimentops.workflows.render, local_runner and
schema_check.

  render [--check] [--out-dir DIR]
  run --run-dir DIR [--template PATH] [-p key=value ...] [--stop-after TASK] [--env KEY=VAL ...]
  pipeline ...            same as `run` (what `sentimentops pipeline` dispatches here; `pipeline run ...` too)
  check FILE...           strict schema + semantic checks of any manifest file (multi-document YAML)
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.workflows import render
from sentimentops.workflows.argo.expressions import ExpressionError
from sentimentops.workflows.argo.spec import SpecError

DEFAULT_TEMPLATE = render.RENDERED_DIR / "sentiment-training.yaml"
log = get_logger("sentimentops.workflows.cli")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentimentops", description="Render, check and run the Argo workflows.")
    sub = parser.add_subparsers(dest="command", required=True)
    render.add_arguments(sub.add_parser("render", help="write charts/sentimentops/files/workflows/*.yaml (or --check them)"))
    for name in ("run", "pipeline"):
        p = sub.add_parser(name, help="run a rendered workflow's DAG locally, one subprocess per task, then its "
                           "exit handler (templateRef resolves against the WorkflowTemplates beside it)")
        p.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                       help=f"rendered Workflow/WorkflowTemplate YAML (default: {DEFAULT_TEMPLATE.name})")
        p.add_argument("--run-dir", type=Path, required=True,
                       help="run folder: outputs, logs, status.json; re-using it resumes and reuses steps")
        p.add_argument("-p", "--parameter", dest="parameters", type=_key_value, action="append", default=[],
                       metavar="KEY=VALUE", help="override a workflow parameter, like `argo submit -p`")
        p.add_argument("--stop-after", metavar="TASK", help="stop once TASK has succeeded (resume later); a task of "
                       "a DAG another task runs is named by its path, e.g. rollout/analyse")
        p.add_argument("--env", dest="env", type=_key_value, action="append", default=[], metavar="KEY=VAL",
                       help="extra environment for every task (over the template's env)")
    check = sub.add_parser("check", help="strict schema + semantic checks of manifest files")
    check.add_argument("files", nargs="+", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["pipeline", "run"]:  # `sentimentops pipeline run ...` reads naturally too
        argv = argv[1:]
    args = _parser().parse_args(argv)
    if args.command == "render":
        return render.handle(args)
    if args.command == "check":
        return _check(args.files)
    # Imported late: `render` must not pay for the runner.
    from sentimentops.workflows.runner.local_runner import run

    # SIGTERM (a stopped webhook, a test fixture, `kill`) unwinds like Ctrl-C: the running step is stopped, not
    # orphaned (workflows/runner/process.py); the same command resumes the run folder later.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = run(args.template, args.run_dir, dict(args.parameters), dict(args.env), args.stop_after)
    except (SpecError, ExpressionError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return result.exit_code


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _check(files: list[Path]) -> int:
    from sentimentops.workflows.checks.schema_check import check_file

    problems = [p for f in files for p in check_file(f)]
    for problem in problems:
        emit(problem)
    emit(f"{len(files)} file(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
