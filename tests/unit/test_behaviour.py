"""The behavioural suite (steps/evaluate/behaviour.py, behaviour_suite.yaml): the packaged file validates and its
expansion is deterministic and pinned per version; the pass rules give exact rates on fake models; a malformed suite
is a DataError naming the file and the problem."""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from sentimentops.steps.core.contract import LABELS
from sentimentops.steps.core.errors import DATA_ERROR, DataError, exit_status
from sentimentops.steps.evaluate.behaviour import (
    TYPES,
    Suite,
    flat_metrics,
    load_suite,
    parse_suite,
    run_suite,
    score_suite,
    suite_version,
    to_json,
)

SUITE_FILE = Path(__file__).resolve().parents[2] / "steps" / "evaluate" / "behaviour_suite.yaml"
# The expanded cases' fingerprint per version. A change to the suite's cases without a version bump fails here: bump
# `version` in behaviour_suite.yaml and pin the new fingerprint (pass rates compare only within one version).
PINNED = {1: "0de5c8462a1026bd202ed7aac6467beb0a9e0e2f09efd613ef903ffb6a6de34c"}
NEGATIVE, POSITIVE = LABELS


@pytest.fixture(scope="module")
def suite() -> Suite:
    return load_suite()


def types_of(suite: Suite) -> dict[str, str]:
    return {t.name: t.type for t in suite.tests}


# ---- the packaged suite -----------------------------------------------------------------------------------------
def test_packaged_suite_is_named_versioned_and_valid(suite):
    assert suite.name == "sentiment-behaviour" and suite.version >= 1
    assert suite_version() == suite_version(suite) == f"sentiment-behaviour@{suite.version}"
    assert load_suite(SUITE_FILE).cases == suite.cases  # the installed package data is the checkout's file
    assert {t.type for t in suite.tests} == set(TYPES)
    kinds = types_of(suite)
    for case in suite.cases:
        if kinds[case.test] == "MFT":
            assert case.label in LABELS and case.perturbed is None
        else:
            assert case.perturbed and case.perturbed != case.text
    assert 150 <= len(suite.cases) <= 300
    mft = {(c.text, c.label) for c in suite.cases if kinds[c.test] == "MFT"}
    assert ("The plot was thin, but the performances and the music carried it; I left smiling.", POSITIVE) in mft
    contrast = {c.label for c in suite.cases if c.test == "mft_contrast"}
    assert contrast == set(LABELS)


def test_expansion_is_deterministic_and_pinned_per_version(suite):
    again = parse_suite(SUITE_FILE.read_text(), "again")
    assert again.cases == suite.cases and again.fingerprint == suite.fingerprint
    assert suite.version in PINNED, f"version {suite.version} has no pinned fingerprint: pin {suite.fingerprint}"
    assert suite.fingerprint == PINNED[suite.version], (
        "the suite's cases changed without a version bump: bump `version` in behaviour_suite.yaml and pin "
        f"{suite.fingerprint} for it")
    counts = {kind: sum(types_of(suite)[c.test] == kind for c in suite.cases) for kind in TYPES}
    if suite.version == 1:
        assert counts == {"MFT": 84, "INV": 132, "DIR": 41}


def test_case_counts_follow_the_file(suite):
    """Templates give the product of their lists, explicit cases one each, INV sources `variants` copies each."""
    raw = yaml.safe_load(SUITE_FILE.read_text())
    lists = raw["lists"]
    expected: dict[str, int] = {}
    texts: dict[str, list[str]] = {}
    for test in raw["tests"]:
        if "cases" in test:
            sources = [c["text"] for c in test["cases"]]
        elif "from_tests" in test:
            sources = list(dict.fromkeys(t for name in test["from_tests"] for t in texts[name]))
        else:
            templates = [test["template"]] if isinstance(test["template"], str) else test["template"]
            sources = []
            for template in templates:
                keys = list(dict.fromkeys(re.findall(r"{(\w+)}", template + test.get("perturbed_template", ""))))
                sources += [template] * math.prod(len(lists[k]) for k in keys)
        texts[test["name"]] = [c.text for c in suite.cases if c.test == test["name"]]
        expected[test["name"]] = len(sources) * (test.get("variants", 1) if test["type"] == "INV" else 1)
    got = {t.name: sum(c.test == t.name for c in suite.cases) for t in suite.tests}
    assert got == expected


def test_perturbations_change_what_they_say_and_nothing_else(suite):
    lists = yaml.safe_load(SUITE_FILE.read_text())["lists"]
    by_test: dict[str, list] = {}
    for case in suite.cases:
        by_test.setdefault(case.test, []).append(case)
    for case in by_test["inv_typos"]:  # one swap of two adjacent, different characters
        diff = [i for i, (a, b) in enumerate(zip(case.text, case.perturbed, strict=True)) if a != b]
        assert len(diff) == 2 and diff[1] == diff[0] + 1
        assert case.text[diff[0]] == case.perturbed[diff[1]] and case.text[diff[1]] == case.perturbed[diff[0]]
    for case in by_test["inv_lowercase"]:
        assert case.perturbed == case.text.lower()
    for case in by_test["inv_strip_punctuation"]:
        assert not re.search(r"[.,;:!?]", case.perturbed)
        assert case.perturbed.split() == re.sub(r"[.,;:!?]", "", case.text).split()
    for case in by_test["inv_add_punctuation"]:
        assert case.perturbed == case.text[:-1] + "!"
    for case in by_test["inv_person_names"]:
        before = [n for n in lists["name"] if n in case.text]
        after = [n for n in lists["name"] if n in case.perturbed]
        assert len(before) == len(after) == 1 and before != after
        assert case.perturbed == case.text.replace(before[0], after[0])


# ---- pass rules -------------------------------------------------------------------------------------------------
MINI = """
name: mini
version: 3
tests:
  - {name: m, type: MFT, capability: vocabulary,
     cases: [{text: good, label: positive}, {text: bad, label: negative}]}
  - {name: i, type: INV, capability: casing, perturb: lowercase, max_delta: 0.1,
     cases: [{text: Good}, {text: Bad}, {text: Fine}]}
  - {name: f, type: DIR, capability: negation, label: positive, expect: flip,
     cases: [{text: good, perturbed: not good}, {text: great, perturbed: not great}]}
  - {name: n, type: DIR, capability: intensifiers, label: positive, expect: intensify, tolerance: 0.05,
     cases: [{text: nice, perturbed: very nice}, {text: fine, perturbed: very fine},
             {text: okay, perturbed: very okay}, {text: meh, perturbed: very meh}]}
"""
MINI_P = {"good": 0.8, "bad": 0.5,                         # MFT: pass; a tie is positive (the contract): fail
          "Good": 0.8, "Bad": 0.3, "Fine": 0.7, "fine": 0.7,  # INV: same label (pass); bad 0.5 crosses (fail)
          "not good": 0.2, "great": 0.9, "not great": 0.6,  # flip: pass; not great stays positive: fail
          "nice": 0.7, "very nice": 0.66,                   # intensify: 0.04 against, within tolerance: pass
          "very fine": 0.6,                                 # 0.1 against > tolerance 0.05: fail
          "okay": 0.52, "very okay": 0.49,                  # within tolerance but crossed away: fail
          "meh": 0.4, "very meh": 0.6}                      # crossed toward the label: pass


def test_pass_rules_give_exact_rates():
    mini = parse_suite(MINI, "mini.yaml")
    # fine at 0.55: INV Fine 0.7 -> 0.55 keeps the label but |dp| 0.15 > max_delta 0.1 (fail); intensify
    # fine 0.55 -> very fine 0.6 moves toward positive (pass)
    result = score_suite(mini, {**MINI_P, "fine": 0.55})
    rates = {r.name: (r.rate.passed, r.rate.cases) for r in result.tests}
    assert rates == {"m": (1, 2), "i": (1, 3), "f": (1, 2), "n": (3, 4)}
    assert {k: (v.passed, v.cases) for k, v in result.by_type.items()} == {"MFT": (1, 2), "INV": (1, 3),
                                                                          "DIR": (4, 6)}
    assert (result.passed, result.cases) == (6, 11) and result.pass_rate == pytest.approx(6 / 11)
    assert list(result.by_capability) == ["vocabulary", "casing", "negation", "intensifiers"]
    failures = {r.name: r.failures for r in result.tests}
    assert [(f.text, f.expected, f.got, f.p) for f in failures["m"]] == [("bad", NEGATIVE, POSITIVE, 0.5)]
    assert [(f.text, f.perturbed) for f in failures["i"]] == [("Bad", "bad"), ("Fine", "fine")]
    assert [(f.text, f.perturbed, f.got, f.p_perturbed) for f in failures["f"]] == [
        ("great", "not great", POSITIVE, 0.6)]
    assert [f.text for f in failures["n"]] == ["okay"]

    strict = score_suite(mini, MINI_P)  # fine 0.7 -> very fine 0.6: dropped 0.1 against the label
    assert {r.name: r.rate.passed for r in strict.tests}["n"] == 2
    assert flat_metrics(strict) == {"behaviour_pass_rate": pytest.approx(6 / 11), "behaviour_cases": 11.0,
                                    "behaviour_pass_rate_mft": 0.5, "behaviour_pass_rate_inv": pytest.approx(2 / 3),
                                    "behaviour_pass_rate_dir": 0.5}


def test_json_report_is_complete_and_serialisable():
    mini = parse_suite(MINI, "mini.yaml")
    report = to_json(score_suite(mini, MINI_P))
    assert json.loads(json.dumps(report)) == report
    assert (report["suite"], report["version"], report["suite_version"]) == ("mini", 3, "mini@3")
    assert report["fingerprint"] == mini.fingerprint
    assert set(report["by_type"]) == set(TYPES)
    assert sum(v["cases"] for v in report["by_type"].values()) == report["cases"] == 11
    test = next(t for t in report["tests"] if t["name"] == "f")
    assert test["failures"] == [{"text": "great", "expected": NEGATIVE, "got": POSITIVE, "p": 0.9,
                                 "perturbed": "not great", "p_perturbed": 0.6}]


def lexicon_model(suite: Suite):
    """A keyword model: counts the suite's plain positive and negative adjectives, blind to negation."""
    lists = yaml.safe_load(SUITE_FILE.read_text())["lists"]
    positive, negative = set(lists["pos_adj"]), set(lists["neg_adj"])

    def predict(texts: list[str]) -> np.ndarray:
        words = [re.findall(r"[a-z]+", t.lower()) for t in texts]
        score = np.array([sum(w in positive for w in ws) - sum(w in negative for w in ws) for ws in words])
        return np.where(score > 0, 0.9, np.where(score < 0, 0.1, 0.4))
    return predict


def test_a_lexicon_model_passes_plain_words_and_fails_negation(suite):
    result = run_suite(lexicon_model(suite), suite)
    rate = {r.name: r.rate.pass_rate for r in result.tests}
    assert rate["mft_positive_adjectives"] == rate["mft_negative_adjectives"] == 1.0
    assert rate["mft_negated_positive"] == 0.0        # "not great" still counts "great"
    assert rate["dir_negation_adjectives"] == 0.0     # negation moves nothing
    assert rate["inv_person_names"] == rate["inv_lowercase"] == 1.0


@pytest.mark.parametrize("p", [0.9, 0.1])
def test_a_constant_model_fails_every_negation_test_and_nothing_invariant(suite, p):
    result = run_suite(lambda texts: np.full(len(texts), p), suite)
    kinds, tests = types_of(suite), {t.name: t for t in suite.tests}
    label = POSITIVE if p >= 0.5 else NEGATIVE
    mft = [c for c in suite.cases if kinds[c.test] == "MFT"]
    dirs = [c for c in suite.cases if kinds[c.test] == "DIR"]
    intensify = [c for c in dirs if tests[c.test].expect == "intensify"]
    assert result.by_type["MFT"].pass_rate == sum(c.label == label for c in mft) / len(mft)
    assert result.by_type["INV"].pass_rate == 1.0
    assert result.by_type["DIR"].pass_rate == len(intensify) / len(dirs)  # no move, no crossing: intensify holds
    flips = [r for r in result.tests if tests[r.name].expect == "flip"]
    assert flips and all(r.rate.passed == 0 for r in flips)
    assert all(len(r.failures) == min(5, r.rate.cases) for r in flips)


def test_the_model_is_asked_once_for_every_distinct_text(suite):
    calls: list[list[str]] = []

    def predict(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.full(len(texts), 0.7)

    run_suite(predict, suite)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0]))
    assert set(calls[0]) == {t for c in suite.cases for t in (c.text, c.perturbed) if t}


@pytest.mark.parametrize("bad", [lambda n: np.full(n - 1, 0.5), lambda n: np.full(n, np.nan),
                                 lambda n: np.full(n, 1.5), lambda n: np.full((n, 2), 0.5)])
def test_a_predict_that_breaks_the_contract_is_refused(suite, bad):
    with pytest.raises(ValueError, match="P\\(positive\\) values in"):
        run_suite(lambda texts: bad(len(texts)), suite)


# ---- malformed suites -------------------------------------------------------------------------------------------
GOOD_TEST = {"name": "m", "type": "MFT", "capability": "vocabulary", "cases": [{"text": "good", "label": "positive"}]}


def suite_text(**changes) -> str:
    raw = {"name": "mini", "version": 1, "lists": {"adj": ["good"]}, "tests": [dict(GOOD_TEST)]}
    raw.update(changes)
    return yaml.safe_dump({k: v for k, v in raw.items() if v is not None})


@pytest.mark.parametrize(("text", "problem"), [
    (suite_text(version=None), "version: Field required"),
    (suite_text(version=0), "version: Input should be greater than or equal to 1"),
    (suite_text(tests=[{**GOOD_TEST, "type": "XYZ"}]), "tests.0.type"),
    (suite_text(tests=[{**GOOD_TEST, "cases": [{"text": "good", "label": "pos"}]}]), "label 'pos' is not one of"),
    (suite_text(tests=[{**GOOD_TEST, "cases": [{"text": "good"}]}]), "every MFT case needs a label"),
    (suite_text(tests=[{**GOOD_TEST, "template": "{nope} film"}]), "exactly one of cases, template"),
    (suite_text(tests=[{**GOOD_TEST, "cases": None, "label": "positive", "template": "{nope} film"}]),
     "unknown lists ['nope']"),
    (suite_text(tests=[GOOD_TEST, GOOD_TEST]), "m: two tests with this name"),
    (suite_text(tests=[{**GOOD_TEST, "colour": "red"}]), "tests.0.colour: Extra inputs are not permitted"),
    (suite_text(tests=[{**GOOD_TEST, "perturb": "typo"}]), "['perturb'] do not apply to a MFT test"),
    (suite_text(tests=[{"name": "i", "type": "INV", "capability": "c", "from_tests": ["later"],
                        "perturb": "typo"}]), "from_tests ['later'] are not earlier tests"),
    (suite_text(tests=[{"name": "i", "type": "INV", "capability": "c", "cases": [{"text": "good"}],
                        "perturb": "lowercase"}]), "perturbation lowercase cannot make 1 changed copy of 'good'"),
    (suite_text(tests=[{"name": "d", "type": "DIR", "capability": "c", "label": "positive", "expect": "flip",
                        "cases": [{"text": "good"}]}]), "every DIR case needs `perturbed`"),
    (suite_text(tests=[]), "tests: List should have at least 1 item"),
    ("name: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_a_malformed_suite_is_a_data_error_naming_file_and_problem(tmp_path, text, problem):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_suite(path)
    assert str(err.value).startswith(f"{path}: ")
    assert problem in str(err.value)
    assert exit_status(err.value)[0] == DATA_ERROR


def test_a_missing_suite_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no behaviour suite file there"):
        load_suite(tmp_path / "absent.yaml")


def test_templates_fill_every_combination_in_order():
    text = suite_text(lists={"a": ["x", "y"], "b": ["1", "2", "3"]},
                      tests=[{"name": "t", "type": "MFT", "capability": "c", "label": "positive",
                              "template": ["{a}{b}", "{b}"]}])
    cases = parse_suite(text).cases
    assert [c.text for c in cases] == ["".join(p) for p in itertools.product("xy", "123")] + ["1", "2", "3"]
