"""The expr-lang subset of Argo's `retryStrategy.expression` (workflows/argo/expressions.py, `evaluate_expr`):
identifiers are variables bound to strings (lastRetry.*), `asInt`/`asFloat`/`string` convert, `contains` and the
word operators work; anything outside the subset, an unknown variable or a non-number for asInt is an error."""

from __future__ import annotations

import re

import pytest

from sentimentops.workflows.argo.expressions import ExpressionError, evaluate_expr

VARS = {"lastRetry.exitCode": "3", "lastRetry.status": "Failed", "lastRetry.message": "Error (exit code 3)",
        "lastRetry.duration": "12.5"}


@pytest.mark.parametrize(("expression", "expected"), [
    ('lastRetry.status == "Failed"', True),
    ("lastRetry.status == 'Error'", False),
    ("asInt(lastRetry.exitCode) > 2", True),
    ("asInt(lastRetry.exitCode) >= 4", False),
    ('lastRetry.exitCode == "3"', True),  # the variables are strings
    ("lastRetry.exitCode == 3", False),  # ... so a string never equals a number
    ("asFloat(lastRetry.duration) < 60", True),
    ('lastRetry.message contains "exit code"', True),
    ('!(lastRetry.message contains "deadline")', True),
    ('not (lastRetry.status == "Failed") or asInt(lastRetry.exitCode) == 3', True),
    ('lastRetry.status == "Failed" and asInt(lastRetry.exitCode) < 3', False),
    ('string(asInt(lastRetry.exitCode)) == "3"', True),
])
def test_expressions(expression, expected):
    assert evaluate_expr(expression, VARS) is expected


def test_a_pod_error_has_exit_code_minus_one():
    assert evaluate_expr("asInt(lastRetry.exitCode) < 0", VARS | {"lastRetry.exitCode": "-1"}) is True


@pytest.mark.parametrize(("expression", "error"), [
    ("asInt(lastRetry.exitCod) > 2", "unknown variable 'lastRetry.exitCod'"),
    ("asInt(lastRetry.status) > 2", "asInt('Failed'): not a number"),
    ("len(lastRetry.status) > 2", "unsupported call len()"),
    ("asInt(lastRetry.exitCode, 2) > 2", "unsupported call asInt() with 2 argument"),
    ("asInt(lastRetry.exitCode) > 2 ||", "expected a value"),
    ('lastRetry.exitCode contains 3', "operator 'contains' needs strings"),
])
def test_errors_are_clear(expression, error):
    with pytest.raises(ExpressionError, match=re.escape(error)):
        evaluate_expr(expression, VARS)
