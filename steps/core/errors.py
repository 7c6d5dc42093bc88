"""One table from a stage's failure to its exit status, and the one wrapper every stage CLI runs under.

Exit statuses are the stage's contract with Argo (`retryStrategy.expression` in workflows/definitions/training.py)
and with the local runner: a deterministic failure is never retried.

| status | meaning | retried on Argo |
| --- | --- | --- |
| 0 | done | - |
| 1 | data error: the input (dataset, model, manifest) is unusable; the log and the step's report say why | no |
| 2 | usage error: a bad flag, setting or profile key | no |
| 3 | anything else (a lost connection, a preempted node's aftermath, a bug): logged with its traceback | yes |

The serving path has its own table (steps/serve/errors.py: exception -> HTTP status); this one is for batch stages.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

from pydantic import ValidationError

from sentimentops.steps.core.logs import get_logger

DATA_ERROR = 1
USAGE_ERROR = 2
OTHER_ERROR = 3
NOT_RETRIED = (DATA_ERROR, USAGE_ERROR)


class StageError(Exception):
    """A failure the stage understands: its message is the whole story (no traceback is shown)."""

    exit_code = OTHER_ERROR


class DataError(StageError, ValueError):
    """The input is unusable (missing folder or manifest, failed expectations, an unreadable model)."""

    exit_code = DATA_ERROR


class UsageError(StageError, ValueError):
    """A bad flag, setting or profile key."""

    exit_code = USAGE_ERROR


# Ordered: the first matching row wins. DataError and UsageError are ValueErrors too (callers that catch ValueError
# keep working); pydantic's ValidationError is one as well.
EXIT_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (UsageError, USAGE_ERROR, "usage error"),
    (ValidationError, USAGE_ERROR, "invalid settings"),
    (DataError, DATA_ERROR, "data error"),
    (FileNotFoundError, DATA_ERROR, "missing input"),
    (StageError, OTHER_ERROR, "failed"),
)


def exit_status(err: BaseException) -> tuple[int, str]:
    """(exit status, short description) for an exception, from EXIT_TABLE; anything unlisted is OTHER_ERROR."""
    for kind, status, what in EXIT_TABLE:
        if isinstance(err, kind):
            return status, what
    return OTHER_ERROR, "unexpected error"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def run_stage(stage: str, body: Callable[[], int | None]) -> int:
    """Runs a stage's body and turns what it raises into the table's exit status, with one clear log line.

    argparse's own exit (status 2 for a bad flag, 0 for --help) passes through unchanged."""
    log = get_logger(f"sentimentops.{stage}")
    try:
        return int(body() or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        log.error("%s: interrupted", stage)
        return 130
    except BaseException as err:
        status, what = exit_status(err)
        if status == OTHER_ERROR and not isinstance(err, StageError):
            log.error("%s: %s: %s", stage, what, _one_line(err), exc_info=err)
        else:
            log.error("%s: %s: %s", stage, what, _one_line(err))
        return status


def stage_main(stage: str) -> Callable[[Callable[[list[str] | None], int | None]], Callable[..., int]]:
    """Decorator form: `@stage_main("train") def main(argv=None): ...` returns the table's status."""

    def wrap(fn: Callable[[list[str] | None], int | None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            return run_stage(stage, lambda: fn(argv))

        return main

    return wrap
