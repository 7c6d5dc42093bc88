"""Behavioural tests for the sentiment model (CheckList, Ribeiro et al. 2020; Made-With-ML): minimum functionality
(MFT), invariance (INV) and directional (DIR) tests, run by evaluate on every model.

Held-out accuracy says how often a model is right on IMDB-like reviews, not which capabilities it lacks: a model can
gain a point of accuracy while losing negation, or start to change its verdict with an actor's name. The suite is
data (behaviour_suite.yaml, versioned: pass rates compare only within one version; its header has the bump rule and
the pass rules) and is expanded here deterministically (templates filled in a fixed product order, perturbations
seeded by the suite's seed, the test's name and the text's index), so two models, two runs and two machines see the
same texts. The model is asked once, for all the suite's distinct texts (`predict`: texts -> P(positive)), so the
suite is cheap through any backend, and every label is decided by the contract's one rule (`labels_of`).

The core is pure: `parse_suite` (text -> Suite) and `score_suite` (Suite, P per text -> SuiteResult); `load_suite`
reads the file and `run_suite` calls the model.

Longer than 350 lines: the file's schema, its expansion and the pass rules are one concept, the meaning of a suite
version; kept in one module so that none of them changes apart from the others (and from the pinned fingerprint).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sentimentops.steps.core.contract import LABELS, labels_of
from sentimentops.steps.core.errors import DataError
from sentimentops.steps.core.logs import get_logger

log = get_logger(__name__)

SUITE_PACKAGE = "sentimentops.steps.evaluate"
SUITE_FILE = "behaviour_suite.yaml"
TYPES = ("MFT", "INV", "DIR")
MAX_FAILURES = 5  # failing examples kept per test: enough to see the pattern, small enough for metrics.json
Predict = Callable[[list[str]], np.ndarray]  # texts -> P(positive) per text, in order

_ONLY = {"MFT": {"label"}, "INV": {"perturb", "swap_list", "variants", "max_delta"},
         "DIR": {"label", "expect", "perturbed_template", "tolerance"}}  # keys only these types may set
_STRIPPED = str.maketrans("", "", ".,;:!?")


# ---- the file's schema (unknown keys are errors) ------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_label(value: str | None) -> str | None:
    if value is not None and value not in LABELS:
        raise ValueError(f"label {value!r} is not one of {list(LABELS)}")
    return value


class CaseSpec(_Strict):
    text: str = Field(min_length=1)
    label: str | None = None
    perturbed: str | None = Field(None, min_length=1)

    @field_validator("label")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return _known_label(value)


class BehaviourTest(_Strict):
    """One test of the suite file (the header of behaviour_suite.yaml documents each key)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: Literal["MFT", "INV", "DIR"]
    capability: str = Field(min_length=1)
    description: str = ""
    label: str | None = None
    cases: list[CaseSpec] | None = Field(None, min_length=1)
    template: str | list[str] | None = None
    perturbed_template: str | None = None
    from_tests: list[str] | None = Field(None, min_length=1)
    perturb: Literal["swap_names", "typo", "strip_punctuation", "add_punctuation", "lowercase"] | None = None
    swap_list: str | None = None
    variants: int = Field(1, ge=1, le=10)
    expect: Literal["flip", "intensify"] | None = None
    tolerance: float = Field(0.0, ge=0.0, le=1.0)
    max_delta: float | None = Field(None, ge=0.0, le=1.0)

    @field_validator("label")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        return _known_label(value)

    @model_validator(mode="after")
    def _shape(self) -> BehaviourTest:
        sources = [key for key in ("cases", "template", "from_tests") if getattr(self, key) is not None]
        if len(sources) != 1:
            raise ValueError(f"{self.name}: give exactly one of cases, template, from_tests (got {sources or 'none'})")
        foreign = sorted((self.model_fields_set & set().union(*_ONLY.values())) - _ONLY[self.type])
        if foreign:
            raise ValueError(f"{self.name}: {foreign} do not apply to a {self.type} test")
        cases = self.cases or []
        if self.type == "INV" and any(c.label is not None for c in cases):
            raise ValueError(f"{self.name}: an INV case has no label (it passes when the label does not change)")
        if self.type != "INV" and self.from_tests is not None:
            raise ValueError(f"{self.name}: from_tests is for INV tests")
        if self.type != "INV" and self.label is None and (not cases or any(c.label is None for c in cases)):
            raise ValueError(f"{self.name}: every {self.type} case needs a label (the test's or its own)")
        if self.type != "DIR" and any(c.perturbed is not None for c in cases):
            raise ValueError(f"{self.name}: `perturbed` is for DIR cases")
        if self.type == "INV" and self.perturb is None:
            raise ValueError(f"{self.name}: an INV test needs `perturb`")
        if self.type == "INV" and (self.perturb == "swap_names") != (self.swap_list is not None):
            raise ValueError(f"{self.name}: swap_list goes with perturb: swap_names, and only with it")
        if self.variants > 1 and self.perturb not in ("swap_names", "typo"):
            raise ValueError(f"{self.name}: variants > 1 only for swap_names and typo")
        if self.type == "DIR":
            if self.expect is None:
                raise ValueError(f"{self.name}: a DIR test needs `expect` (flip or intensify)")
            if (self.template is not None) != (self.perturbed_template is not None) or isinstance(self.template, list):
                raise ValueError(f"{self.name}: a DIR template is one string with a perturbed_template")
            if any(c.perturbed is None for c in cases):
                raise ValueError(f"{self.name}: every DIR case needs `perturbed`")
        return self

    def templates(self) -> list[str]:
        return [self.template] if isinstance(self.template, str) else list(self.template or [])


class SuiteFile(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: int = Field(ge=1)
    seed: int = 0
    lists: dict[str, list[str]] = Field(default_factory=dict)
    tests: list[BehaviourTest] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> SuiteFile:
        empty = [k for k, items in self.lists.items() if not items or not all(item.strip() for item in items)]
        if empty:
            raise ValueError(f"lists {empty}: a list needs items, none of them blank")
        seen: set[str] = set()
        for test in self.tests:
            if test.name in seen:
                raise ValueError(f"{test.name}: two tests with this name")
            keys = _placeholders(*test.templates(), *([test.perturbed_template] if test.perturbed_template else []))
            unknown = [k for k in [*keys, *([test.swap_list] if test.swap_list else [])] if k not in self.lists]
            later = [t for t in test.from_tests or [] if t not in seen]
            if unknown or later:
                raise ValueError(f"{test.name}: unknown lists {unknown}" if unknown
                                 else f"{test.name}: from_tests {later} are not earlier tests")
            seen.add(test.name)
        return self


# ---- the expanded suite ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One concrete check: MFT `text` + expected `label`; INV/DIR `text` -> `perturbed` (DIR: `label` is the
    original's sentiment)."""

    test: str
    text: str
    perturbed: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    tests: tuple[BehaviourTest, ...]
    cases: tuple[Case, ...]
    source: str

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def fingerprint(self) -> str:
        """sha256 of the expanded cases and the pass rules: what the version must change with."""
        payload = [[asdict(c) for c in self.cases], [t.model_dump(exclude={"description"}) for t in self.tests]]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def texts(self) -> list[str]:
        """Every distinct text the model must score, in first-seen order."""
        return list(dict.fromkeys(t for c in self.cases for t in (c.text, c.perturbed) if t is not None))


def _placeholders(*templates: str) -> list[str]:
    keys: list[str] = []
    for template in templates:
        for _, key, _, _ in string.Formatter().parse(template):
            if key is not None and key not in keys:
                keys.append(key)
    return keys


def _fill(templates: Sequence[str], lists: Mapping[str, list[str]]) -> Iterator[list[str]]:
    """Every combination of the named lists, in the order the placeholders first appear; templates filled jointly."""
    keys = _placeholders(*templates)
    for values in itertools.product(*(lists[k] for k in keys)):
        yield [t.format(**dict(zip(keys, values, strict=True))) for t in templates]


def _typo(text: str, rng: random.Random) -> str:
    """Two adjacent, different letters of one word swapped (the commonest typing slip)."""
    words = [m for m in re.finditer(r"[A-Za-z]{3,}", text) if len(set(m.group())) > 1]
    if not words:
        return text
    match = rng.choice(words)
    word, start = match.group(), match.start()
    i = rng.choice([k for k in range(len(word) - 1) if word[k] != word[k + 1]])
    return text[:start + i] + word[i + 1] + word[i] + text[start + i + 2:]


def perturbations(test: BehaviourTest, text: str, rng: random.Random, lists: Mapping[str, list[str]]) -> list[str]:
    """The `variants` perturbed copies of `text` for an INV test (distinct; deterministic for a given rng)."""
    if test.perturb == "lowercase":
        return [text.lower()]
    if test.perturb == "strip_punctuation":
        return [" ".join(text.translate(_STRIPPED).split())]
    if test.perturb == "add_punctuation":
        return [text[:-1] + "!" if text.endswith(".") else text + "!"]
    if test.perturb == "typo":
        made = list(dict.fromkeys(_typo(text, rng) for _ in range(20 * test.variants)))
        return made[:test.variants] if len(made) >= test.variants else []
    names = sorted(lists[test.swap_list or ""], key=len, reverse=True)  # longest first: "Tom Hanks" before "Tom"
    found = next((n for n in names if re.search(rf"\b{re.escape(n)}\b", text)), None)
    others = [n for n in lists[test.swap_list or ""] if n != found]
    if found is None or len(others) < test.variants:
        return []
    return [re.sub(rf"\b{re.escape(found)}\b", other, text) for other in rng.sample(others, test.variants)]


def _expand(spec: SuiteFile, source: str) -> tuple[Case, ...]:
    made: dict[str, list[Case]] = {}
    for test in spec.tests:
        if test.cases is not None:
            rows = [(c.text, c.perturbed, c.label or test.label) for c in test.cases]
        elif test.from_tests is not None:
            texts = dict.fromkeys(c.text for name in test.from_tests for c in made[name])
            rows = [(text, None, None) for text in texts]
        elif test.perturbed_template is not None:
            rows = [(a, b, test.label) for a, b in _fill([test.templates()[0], test.perturbed_template], spec.lists)]
        else:
            rows = [(a, None, test.label) for template in test.templates() for (a,) in _fill([template], spec.lists)]
        cases = []
        for index, (text, perturbed, label) in enumerate(rows):
            if test.type != "INV":
                cases.append(Case(test.name, text, perturbed, label))
                continue
            variants = perturbations(test, text, random.Random(f"{spec.seed}:{test.name}:{index}"), spec.lists)
            if not variants or text in variants:
                raise DataError(f"{source}: test {test.name}: perturbation {test.perturb} cannot make "
                                f"{test.variants} changed cop{'y' if test.variants == 1 else 'ies'} of {text!r}")
            cases += [Case(test.name, text, p) for p in variants]
        if not cases:
            raise DataError(f"{source}: test {test.name} expands to no cases")
        made[test.name] = cases
    return tuple(c for cases in made.values() for c in cases)


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    """The suite from the file's text, validated and expanded. DataError naming `source` and the problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DataError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a mapping with name, version and tests, got {type(raw).__name__}")
    try:
        spec = SuiteFile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'suite'}: {e['msg']}" for e in err.errors()[:5])
        raise DataError(f"{source}: malformed behaviour suite: {problems}") from err
    return Suite(spec.name, spec.version, tuple(spec.tests), _expand(spec, source), source)


def load_suite(path: Path | str | None = None) -> Suite:
    """The suite at `path`, or the one packaged with evaluate (behaviour_suite.yaml)."""
    if path is None:
        resource = resources.files(SUITE_PACKAGE) / SUITE_FILE
        return parse_suite(resource.read_text(encoding="utf-8"), str(resource))
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no behaviour suite file there")
    return parse_suite(path.read_text(encoding="utf-8"), str(path))


def suite_version(suite: Suite | None = None) -> str:
    """`name@version` of `suite` (the packaged one by default), e.g. "sentiment-behaviour@1"."""
    return (suite or load_suite()).id


# ---- results -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    cases: int
    passed: int

    @property
    def pass_rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0


@dataclass(frozen=True)
class Failure:
    text: str
    expected: str
    got: str
    p: float                       # P(positive) of `text`
    perturbed: str | None = None   # INV and DIR
    p_perturbed: float | None = None


@dataclass(frozen=True)
class BehaviourTestResult:
    name: str
    type: str
    capability: str
    rate: Rate
    failures: tuple[Failure, ...]  # the first MAX_FAILURES, in suite order


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    version: int
    fingerprint: str
    total: Rate
    by_type: dict[str, Rate]        # only the types the suite has
    by_capability: dict[str, Rate]
    tests: tuple[BehaviourTestResult, ...]

    @property
    def cases(self) -> int:
        return self.total.cases

    @property
    def passed(self) -> int:
        return self.total.passed

    @property
    def pass_rate(self) -> float:
        return self.total.pass_rate


def judge(test: BehaviourTest, case: Case, p: float, q: float | None) -> tuple[bool, str, str]:
    """(passed, expected, got) for one case: `p` = P(positive) of the text, `q` of the perturbed text."""
    got = str(labels_of([p])[0])
    if test.type == "MFT":
        return got == case.label, str(case.label), got
    assert q is not None
    after = str(labels_of([q])[0])
    if test.type == "INV":
        within = test.max_delta is None or abs(q - p) <= test.max_delta + 1e-12
        bound = f", |dp| <= {test.max_delta}" if test.max_delta is not None else ""
        return after == got and within, got + bound, f"{after}, |dp| = {abs(q - p):.3f}"
    if test.expect == "flip":
        return after != got, LABELS[1 - LABELS.index(got)], after
    sign = 1.0 if case.label == LABELS[1] else -1.0
    crossed_away = got == case.label and after != case.label
    passed = sign * (q - p) >= -test.tolerance - 1e-12 and not crossed_away
    bound = f"P(positive) {'>=' if sign > 0 else '<='} {p - sign * test.tolerance:.3f}, no cross from {case.label}"
    return passed, bound, f"P(positive) {q:.3f}, {after}"


def score_suite(suite: Suite, p_by_text: Mapping[str, float]) -> SuiteResult:
    """The pure core: every case judged from P(positive) per text."""
    tests = {t.name: t for t in suite.tests}
    outcomes: dict[str, list[tuple[bool, Failure]]] = {t.name: [] for t in suite.tests}
    for case in suite.cases:
        p = float(p_by_text[case.text])
        q = float(p_by_text[case.perturbed]) if case.perturbed is not None else None
        passed, expected, got = judge(tests[case.test], case, p, q)
        outcomes[case.test].append((passed, Failure(case.text, expected, got, p, case.perturbed, q)))
    results = tuple(BehaviourTestResult(t.name, t.type, t.capability,
                                        Rate(len(outcomes[t.name]), sum(ok for ok, _ in outcomes[t.name])),
                                        tuple(f for ok, f in outcomes[t.name] if not ok)[:MAX_FAILURES])
                    for t in suite.tests)

    def total(group: list[BehaviourTestResult]) -> Rate:
        return Rate(sum(r.rate.cases for r in group), sum(r.rate.passed for r in group))

    by_type = {kind: total([r for r in results if r.type == kind]) for kind in TYPES
               if any(r.type == kind for r in results)}
    capabilities = dict.fromkeys(r.capability for r in results)
    by_capability = {c: total([r for r in results if r.capability == c]) for c in capabilities}
    return SuiteResult(suite.name, suite.version, suite.fingerprint, total(list(results)), by_type, by_capability,
                       results)


def run_suite(predict: Predict, suite: Suite | None = None) -> SuiteResult:
    """Scores the suite's distinct texts with one `predict` call and judges every case. ValueError when `predict`
    does not return one P(positive) in [0, 1] per text."""
    suite = suite or load_suite()
    texts = suite.texts()
    probs = np.asarray(predict(texts), dtype=np.float64).reshape(-1)
    if probs.shape != (len(texts),) or not np.all((probs >= 0.0) & (probs <= 1.0)):
        raise ValueError(f"behaviour suite {suite.id}: predict must return {len(texts)} P(positive) values in "
                         f"[0, 1], got shape {probs.shape} (range {probs.min(initial=0):.3g}..{probs.max(initial=0):.3g})")
    result = score_suite(suite, dict(zip(texts, probs.tolist(), strict=True)))
    log.info("behaviour suite %s: %d/%d cases pass (%s)", suite.id, result.passed, result.cases,
             ", ".join(f"{k} {v.pass_rate:.2f}" for k, v in result.by_type.items()))
    return result


def _rate(rate: Rate) -> dict[str, float | int]:
    return {"cases": rate.cases, "passed": rate.passed, "pass_rate": rate.pass_rate}


def to_json(result: SuiteResult) -> dict:
    """The result for evaluate's metrics.json (key "behaviour")."""
    return {"suite": result.suite, "version": result.version, "suite_version": f"{result.suite}@{result.version}",
            "fingerprint": result.fingerprint, **_rate(result.total),
            "by_type": {k: _rate(v) for k, v in result.by_type.items()},
            "by_capability": {k: _rate(v) for k, v in result.by_capability.items()},
            "tests": [{"name": r.name, "type": r.type, "capability": r.capability, **_rate(r.rate),
                       "failures": [asdict(f) for f in r.failures]} for r in result.tests]}


def flat_metrics(result: SuiteResult) -> dict[str, float]:
    """MLflow metrics: the overall and per-type pass rates (a type the suite lacks is left out) and the case count."""
    metrics = {"behaviour_pass_rate": result.pass_rate, "behaviour_cases": float(result.cases)}
    metrics.update({f"behaviour_pass_rate_{k.lower()}": v.pass_rate for k, v in result.by_type.items()})
    return metrics
