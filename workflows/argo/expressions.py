"""The govaluate subset Argo uses for `when`, DAG `depends` expressions, and the expr-lang subset of
`retryStrategy.expression`, all on one parser.

`when`: Argo substitutes `{{...}}` first, then hands the text to govaluate (workflow/controller/operator.go,
`shouldExecute`), after turning every bare identifier into a string literal: that is why
`{{tasks.flip.outputs.result}} == heads` works without quotes. Supported here: `==` `!=` `<` `>` `<=` `>=`
`=~` `!~` `&&` `||` `!` unary `-`, parentheses, quoted strings, numbers, `true`/`false`. Anything else
(arithmetic, `in`, ternaries, `{{=expr}}`) raises ExpressionError with the offending position, instead of
guessing what Argo would do.

`retryStrategy.expression` is expr-lang (github.com/expr-lang/expr), evaluated with the variables
`lastRetry.exitCode`, `lastRetry.status`, `lastRetry.duration` and `lastRetry.message`, all strings
(docs/variables.md, "RetryStrategy"), plus Argo's functions `asInt`, `asFloat` and `string`. `evaluate_expr`
covers the subset the templates use: the operators above, `contains`, `and`/`or`/`not`, and those three
functions; identifiers are variables (a missing one is an error, as in expr), not strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Value = bool | float | str


class ExpressionError(ValueError):
    """The expression is outside the supported subset, malformed, or mixes types govaluate rejects."""


# govaluate variable names: letters, digits, `_` and `.`; Argo `depends` names may also contain `-`.
WHEN_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_.]*"
DEPENDS_IDENTIFIER = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"

_OPERATORS = ("&&", "||", "==", "!=", "<=", ">=", "=~", "!~", "<", ">", "!", "(", ")", "-")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


@dataclass(frozen=True)
class Token:
    kind: str  # "num" | "str" | "bool" | "ident" | "op" | "end"
    value: Value
    pos: int


@dataclass(frozen=True)
class Literal:
    value: Value


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


Node = Literal | Name | Unary | Binary | Call

# expr-lang's word operators, as the symbol this parser uses.
_WORD_OPERATORS = {"and": "&&", "or": "||", "not": "!", "contains": "contains"}


def tokenize(text: str, identifier: str = WHEN_IDENTIFIER, expr: bool = False) -> list[Token]:
    ident = re.compile(identifier)
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        if text.startswith("{{", pos):
            raise ExpressionError(f"unresolved template variable at {pos} in {text!r}")
        if m := _STRING.match(text, pos):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            tokens.append(Token("str", re.sub(r"\\(.)", r"\1", raw), pos))
        elif m := _NUMBER.match(text, pos):
            tokens.append(Token("num", float(m.group()), pos))
        elif m := ident.match(text, pos):
            word = m.group()
            if word in ("true", "false"):
                tokens.append(Token("bool", word == "true", pos))
            elif expr and word in _WORD_OPERATORS:
                tokens.append(Token("op", _WORD_OPERATORS[word], pos))
            else:
                tokens.append(Token("ident", word, pos))
        else:
            op = next((o for o in (*_OPERATORS, *((",",) if expr else ())) if text.startswith(o, pos)), None)
            if op is None:
                raise ExpressionError(f"unsupported syntax {text[pos:pos + 10]!r} at {pos} in {text!r}")
            tokens.append(Token("op", op, pos))
            pos += len(op)
            continue
        pos = m.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent, govaluate precedence: `||` < `&&` < comparison < unary < primary."""

    _COMPARISONS = ("==", "!=", "<", ">", "<=", ">=", "=~", "!~", "contains")

    def __init__(self, text: str, identifier: str, expr: bool = False) -> None:
        self.text = text
        self.expr = expr
        self.tokens = tokenize(text, identifier, expr)
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def at(self, op: str) -> bool:
        return self.peek().kind == "op" and self.peek().value == op

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, tok: Token, what: str) -> ExpressionError:
        found = "end of expression" if tok.kind == "end" else repr(tok.value)
        return ExpressionError(f"expected {what} but found {found} at {tok.pos} in {self.text!r}")

    def parse(self) -> Node:
        node = self.or_()
        if self.peek().kind != "end":
            raise self.fail(self.peek(), "an operator (&&, ||, ==, ...)")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.at("||"):
            self.take()
            node = Binary("||", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.comparison()
        while self.at("&&"):
            self.take()
            node = Binary("&&", node, self.comparison())
        return node

    def comparison(self) -> Node:
        node = self.unary()
        tok = self.peek()
        if tok.kind == "op" and tok.value in self._COMPARISONS:
            self.take()
            node = Binary(str(tok.value), node, self.unary())
            nxt = self.peek()
            if nxt.kind == "op" and nxt.value in self._COMPARISONS:
                raise ExpressionError(f"chained comparison at {nxt.pos} in {self.text!r}; use && or parentheses")
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind == "op" and tok.value in ("!", "-"):
            self.take()
            return Unary(str(tok.value), self.unary())
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind in ("num", "str", "bool"):
            return Literal(tok.value)
        if tok.kind == "ident":
            if self.expr and self.at("("):
                return self.call(str(tok.value))
            return Name(str(tok.value))
        if tok.kind == "op" and tok.value == "(":
            node = self.or_()
            if not self.at(")"):
                raise self.fail(self.peek(), "')'")
            self.take()
            return node
        raise self.fail(tok, "a value, '(' or '!'")

    def call(self, function: str) -> Node:
        self.take()  # (
        args: list[Node] = []
        while not self.at(")"):
            if args:
                if not self.at(","):
                    raise self.fail(self.peek(), "',' or ')'")
                self.take()
            args.append(self.or_())
        self.take()
        return Call(function, tuple(args))


def parse(text: str, identifier: str = WHEN_IDENTIFIER, expr: bool = False) -> Node:
    if not text.strip():
        raise ExpressionError("empty expression")
    return _Parser(text, identifier, expr).parse()


def names(node: Node) -> list[str]:
    """Identifiers in source order (the semantic check uses this to find task names in `depends`)."""
    if isinstance(node, Name):
        return [node.name]
    if isinstance(node, Unary):
        return names(node.operand)
    if isinstance(node, Binary):
        return names(node.left) + names(node.right)
    if isinstance(node, Call):
        return [n for arg in node.args for n in names(arg)]
    return []


def _type(value: Value) -> str:
    return "boolean" if isinstance(value, bool) else "number" if isinstance(value, float) else "string"


def _as_number(value: Value, function: str) -> float:
    """Argo's asInt/asFloat (util/expr/env): a number, or a string that parses as one; anything else fails."""
    if isinstance(value, float):
        return float(int(value)) if function == "asInt" else value
    if isinstance(value, str):
        try:
            return float(int(value.strip())) if function == "asInt" else float(value.strip())
        except ValueError:
            pass
    raise ExpressionError(f"{function}({value!r}): not a number")


def _string(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


_FUNCTIONS: dict[str, Callable[[Value], Value]] = {
    "asInt": lambda v: _as_number(v, "asInt"), "asFloat": lambda v: _as_number(v, "asFloat"), "string": _string,
}


def evaluate_node(node: Node, resolve: Callable[[str], Value]) -> Value:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Name):
        return resolve(node.name)
    if isinstance(node, Call):
        function = _FUNCTIONS.get(node.function)
        if function is None or len(node.args) != 1:
            raise ExpressionError(f"unsupported call {node.function}() with {len(node.args)} argument(s); "
                                  f"known: {', '.join(f'{f}(x)' for f in _FUNCTIONS)}")
        return function(evaluate_node(node.args[0], resolve))
    if isinstance(node, Unary):
        value = evaluate_node(node.operand, resolve)
        if node.op == "!" and isinstance(value, bool):
            return not value
        if node.op == "-" and _type(value) == "number":
            return -value
        raise ExpressionError(f"operator {node.op!r} cannot apply to {_type(value)} {value!r}")
    if node.op in ("&&", "||"):
        left = evaluate_node(node.left, resolve)
        if not isinstance(left, bool):
            raise ExpressionError(f"operator {node.op!r} needs booleans, got {_type(left)} {left!r}")
        if (node.op == "&&" and not left) or (node.op == "||" and left):
            return left  # govaluate short-circuits too
        right = evaluate_node(node.right, resolve)
        if not isinstance(right, bool):
            raise ExpressionError(f"operator {node.op!r} needs booleans, got {_type(right)} {right!r}")
        return right
    left, right = evaluate_node(node.left, resolve), evaluate_node(node.right, resolve)
    if node.op in ("==", "!="):
        # govaluate compares with reflect.DeepEqual: "1" (string) != 1 (number), true != "true".
        equal = _type(left) == _type(right) and left == right
        return equal if node.op == "==" else not equal
    if node.op == "contains":
        if not (isinstance(left, str) and isinstance(right, str)):
            raise ExpressionError(f"operator 'contains' needs strings, got {left!r} and {right!r}")
        return right in left
    if node.op in ("=~", "!~"):
        if not (isinstance(left, str) and isinstance(right, str)):
            raise ExpressionError(f"operator {node.op!r} needs strings, got {left!r} and {right!r}")
        matched = re.search(right, left) is not None
        return matched if node.op == "=~" else not matched
    if _type(left) != _type(right) or isinstance(left, bool):
        raise ExpressionError(f"cannot order {_type(left)} {left!r} and {_type(right)} {right!r} with {node.op!r}")
    return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[node.op]  # type: ignore[operator]


def evaluate_when(text: str) -> bool:
    """Evaluate an already-substituted `when`; bare identifiers are strings, as in Argo."""
    result = evaluate_node(parse(text), lambda name: name)
    if not isinstance(result, bool):
        raise ExpressionError(f"`when` must evaluate to a boolean, got {_type(result)} {result!r} from {text!r}")
    return result


def evaluate_expr(text: str, variables: Mapping[str, str]) -> Value:
    """Evaluate an expr-lang expression (the subset above) with these variables, all strings as Argo binds them."""

    def resolve(name: str) -> Value:
        if name not in variables:
            raise ExpressionError(f"unknown variable {name!r} in {text!r} (known: {', '.join(sorted(variables))})")
        return variables[name]

    return evaluate_node(parse(text, expr=True), resolve)
