"""The govaluate subset Argo uses for `when`, plus DAG `depends` expressions built on the same parser.

Argo substitutes `{{...}}` first, then hands the text to govaluate (workflow/controller/operator.go,
`shouldExecute`), after turning every bare identifier into a string literal: that is why
`{{tasks.flip.outputs.result}} == heads` works without quotes. Supported here: `==` `!=` `<` `>` `<=` `>=`
`=~` `!~` `&&` `||` `!` unary `-`, parentheses, quoted strings, numbers, `true`/`false`. Anything else
(arithmetic, `in`, ternaries, `{{=expr}}`) raises ExpressionError with the offending position, instead of
guessing what Argo would do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


Node = Literal | Name | Unary | Binary


def tokenize(text: str, identifier: str = WHEN_IDENTIFIER) -> list[Token]:
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
            else:
                tokens.append(Token("ident", word, pos))
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, pos)), None)
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

    _COMPARISONS = ("==", "!=", "<", ">", "<=", ">=", "=~", "!~")

    def __init__(self, text: str, identifier: str) -> None:
        self.text = text
        self.tokens = tokenize(text, identifier)
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
            return Name(str(tok.value))
        if tok.kind == "op" and tok.value == "(":
            node = self.or_()
            if not self.at(")"):
                raise self.fail(self.peek(), "')'")
            self.take()
            return node
        raise self.fail(tok, "a value, '(' or '!'")


def parse(text: str, identifier: str = WHEN_IDENTIFIER) -> Node:
    if not text.strip():
        raise ExpressionError("empty expression")
    return _Parser(text, identifier).parse()


def names(node: Node) -> list[str]:
    """Identifiers in source order (the semantic check uses this to find task names in `depends`)."""
    if isinstance(node, Name):
        return [node.name]
    if isinstance(node, Unary):
        return names(node.operand)
    if isinstance(node, Binary):
        return names(node.left) + names(node.right)
    return []


def _type(value: Value) -> str:
    return "boolean" if isinstance(value, bool) else "number" if isinstance(value, float) else "string"


def evaluate_node(node: Node, resolve: Callable[[str], Value]) -> Value:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Name):
        return resolve(node.name)
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
