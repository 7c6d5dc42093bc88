"""Table tests for the govaluate subset used by Argo `when` (and the `depends` parser built on it)."""

from __future__ import annotations

import re

import pytest

from sentimentops.workflows.argo.expressions import (
    DEPENDS_IDENTIFIER,
    ExpressionError,
    evaluate_when,
    names,
    parse,
)
from sentimentops.workflows.argo.spec import DagTask, depends_on, depends_satisfied


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("true", True),
        ("false", False),
        ("true == true", True),
        ("true == false", False),
        # Bare words are strings (Argo turns govaluate variables into string literals).
        ("heads == heads", True),
        ("heads == tails", False),
        ("heads != tails", True),
        ("'heads' == heads", True),
        ('"a b" == \'a b\'', True),
        ("'it\\'s' == \"it's\"", True),
        # Numbers compare numerically, not as text.
        ("0.91 >= 0.9", True),
        ("10 > 9", True),
        ("2 <= 2", True),
        ("1e-3 < 0.01", True),
        ("-1 < 0", True),
        ("1 == 1.0", True),
        # govaluate's == is type-strict (reflect.DeepEqual).
        ("1 == '1'", False),
        ("true == 'true'", False),
        ("true != 'true'", True),
        # Strings order lexicographically.
        ("'abc' < 'abd'", True),
        # Logic, precedence and parentheses: && binds tighter than ||.
        ("true || false && false", True),
        ("(true || false) && false", False),
        ("!false", True),
        ("!(1 > 2)", True),
        ("!true || true", True),
        ("true && !false && 3 > 2", True),
        # Regex match.
        ("'drift: psi 0.3' =~ '^drift'", True),
        ("manual !~ '^drift'", True),
        # Values that Argo has substituted in, e.g. a promoted flag and an MLflow version.
        ("true == true && 7 > 6", True),
    ],
)
def test_when_table(expr, expected):
    assert evaluate_when(expr) is expected


@pytest.mark.parametrize(
    "expr, message",
    [
        ("", "empty"),
        ("1 + 2 == 3", "unsupported syntax"),
        ("a * b", "unsupported syntax"),
        ("x in y", "expected an operator"),
        ("(true", "expected ')'"),
        ("true &&", "expected a value"),
        ("== true", "expected a value"),
        ("1 < 2 < 3", "chained comparison"),
        ("5", "must evaluate to a boolean"),
        ("heads", "must evaluate to a boolean"),
        ("1 && true", "needs booleans"),
        ("false || 'x'", "needs booleans"),
        ("!'x'", "cannot apply"),
        ("1 < 'a'", "cannot order"),
        ("true < false", "cannot order"),
        ("{{tasks.a.outputs.result}} == x", "unresolved template variable"),
        ("a ? b : c", "unsupported syntax"),
    ],
)
def test_when_rejects_with_a_clear_error(expr, message):
    with pytest.raises(ExpressionError, match=re.escape(message)):
        evaluate_when(expr)


def test_short_circuit_does_not_evaluate_the_right_side():
    # govaluate short-circuits; a right side that would be a type error is never reached.
    assert evaluate_when("true || 1") is True
    assert evaluate_when("false && 1") is False


def test_depends_names_allow_hyphens_and_results():
    node = parse("(train-gpu.Succeeded || train-cpu.Failed) && evaluate", DEPENDS_IDENTIFIER)
    assert names(node) == ["train-gpu.Succeeded", "train-cpu.Failed", "evaluate"]


def _task(depends: str) -> DagTask:
    return DagTask(name="t", template="x", depends=depends, when=None, parameters={}, artifacts={})


@pytest.mark.parametrize(
    "depends, phases, expected",
    [
        ("a", {"a": "Succeeded"}, True),
        ("a", {"a": "Reused"}, True),
        ("a", {"a": "Skipped"}, True),  # a skipped task satisfies a bare dependency, as in Argo
        ("a", {"a": "Failed"}, False),
        ("a", {"a": "Omitted"}, False),
        ("a.Failed", {"a": "Failed"}, True),
        ("a.Failed", {"a": "Succeeded"}, False),
        ("a.Succeeded || a.Failed", {"a": "Failed"}, True),
        ("a && b", {"a": "Succeeded", "b": "Failed"}, False),
        ("a || b", {"a": "Succeeded", "b": "Failed"}, True),
        ("!a.Failed", {"a": "Succeeded"}, True),
        ("", {}, True),
    ],
)
def test_depends_table(depends, phases, expected):
    assert depends_satisfied(_task(depends), phases) is expected


def test_depends_on_lists_each_task_once():
    assert depends_on(_task("(a.Succeeded || a.Failed) && b-2")) == ["a", "b-2"]
