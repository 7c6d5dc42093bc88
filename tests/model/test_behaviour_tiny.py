"""The model tier: the behavioural suite end to end on a real (tiny, untrained) DistilBERT through the scoring path
evaluate uses (the predictor's TextEncoder at contract.MAX_TOKENS, then core.scoring.predict_proba).

It checks the machinery, not the model: the tiny model is random, so its pass rates mean nothing; what must hold is
that every case is scored, the rates are consistent with the counts, failures carry their texts and probabilities,
and the same model gives the same report twice."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sentimentops.steps.core.backends import TextEncoder
from sentimentops.steps.core.contract import LABELS, MAX_TOKENS, labels_of
from sentimentops.steps.evaluate.behaviour import (
    MAX_FAILURES,
    TYPES,
    flat_metrics,
    load_suite,
    run_suite,
    to_json,
)


def serving_predict(model_dir: Path, calls: list[int]):
    """texts -> P(positive), tokenized as the predictor serves and scored as evaluate scores (cli.score)."""
    from transformers import AutoModelForSequenceClassification

    from sentimentops.steps.core.scoring import predict_proba

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    encoder = TextEncoder(model_dir, MAX_TOKENS)

    def predict(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        ids = [e.ids for e in encoder.encode(texts)]
        return predict_proba(model, ids, pad_id=encoder.pad_id, batch_size=64, device="cpu", precision="fp32",
                             max_length=MAX_TOKENS)
    return predict


def test_suite_runs_end_to_end_on_the_tiny_model(tiny_model_dir):
    suite = load_suite()
    calls: list[int] = []
    predict = serving_predict(tiny_model_dir, calls)
    result = run_suite(predict, suite)

    assert calls == [len(suite.texts())]  # one batched call for the whole suite
    assert result.cases == len(suite.cases) and (result.suite, result.version) == (suite.name, suite.version)
    assert sum(r.rate.cases for r in result.tests) == result.cases
    assert sum(r.rate.passed for r in result.tests) == result.passed
    assert set(result.by_type) == set(TYPES)
    for groups in (result.by_type, result.by_capability):
        assert sum(v.cases for v in groups.values()) == result.cases
        assert sum(v.passed for v in groups.values()) == result.passed
    rates = [result.pass_rate, *(v.pass_rate for v in result.by_type.values()),
             *(r.rate.pass_rate for r in result.tests)]
    assert all(0.0 <= rate <= 1.0 for rate in rates)

    kinds = {t.name: t.type for t in suite.tests}
    texts = set(suite.texts())
    for test in result.tests:
        assert len(test.failures) == min(MAX_FAILURES, test.rate.cases - test.rate.passed)
        for failure in test.failures:
            assert failure.text in texts and 0.0 <= failure.p <= 1.0
            if kinds[test.name] == "MFT":
                assert failure.expected in LABELS and failure.got == labels_of([failure.p])[0] != failure.expected
            else:
                assert failure.perturbed in texts and 0.0 <= failure.p_perturbed <= 1.0

    report = to_json(result)
    assert json.loads(json.dumps(report)) == report
    assert report["cases"] == result.cases and report["suite_version"] == suite.id
    metrics = flat_metrics(result)
    assert set(metrics) == {"behaviour_pass_rate", "behaviour_pass_rate_mft", "behaviour_pass_rate_inv",
                            "behaviour_pass_rate_dir", "behaviour_cases"}
    assert metrics["behaviour_cases"] == float(len(suite.cases))

    assert to_json(run_suite(predict, suite)) == report  # the same model, the same report


def test_the_suite_scores_each_text_as_a_single_request_would(tiny_model_dir):
    """Batching the suite's texts (length-sorted, padded) must not change a text's P(positive) beyond float noise:
    the suite's probabilities are the ones a one-review request gets."""
    suite = load_suite()
    predict = serving_predict(tiny_model_dir, [])
    texts = suite.texts()
    batched = predict(texts)
    picks = [0, len(texts) // 2, len(texts) - 1]
    single = np.array([predict([texts[i]])[0] for i in picks])
    assert batched[picks] == pytest.approx(single, abs=1e-5)
