"""sentimentops.steps.core.contract: what evaluate, register, the predictor and the drift monitor must agree on.

The incident behind it: evaluate built the drift reference from transformers tokens (special = the tokenizer's
special-token strings) while the predictor recorded tokenizers' special-tokens mask, and the label rule, the 512
limit and the MLmodel parsing were each written several times; two roundings of one number once gave PSI 1.5 on
identical traffic. Here the features of the same texts, computed the way evaluate builds its reference and the way
the predictor records them, must agree exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from sentimentops.steps.core.contract import (
    LABELS,
    MAX_TOKENS,
    ExportReport,
    ModelFolder,
    class_ids_of,
    content_share,
    find_model_root,
    label_of,
    labels_of,
    read_model_folder,
)

# Texts that once split the two paths: unknown characters ([UNK] is a special *string* but not a special *token*),
# literal special-token text, a review past the limit ("good " * 600 -> truncation), accents and punctuation.
TRICKY = ["a fine film", "naïve café ☃ ⛄ zzqxj!!", "[CLS] the [SEP] literal [MASK] tokens [UNK]",
          "good " * 600, "un-be-liev-able... 10/10 — would watch again", "Ça m'a plu, très réussi."]


@pytest.fixture(scope="module")
def texts(imdb_dir) -> list[str]:
    return TRICKY + pd.read_parquet(imdb_dir / "sample_test.parquet")["text"].head(50).tolist()


def test_evaluate_reference_features_equal_the_predictor_records(tiny_model_dir, texts):
    from sentimentops.steps.drift.records import parse_records
    from sentimentops.steps.evaluate.metrics import drift_features
    from sentimentops.steps.evaluate.scoring import encode, score_torch
    from sentimentops.steps.serve.model import ModelInfo, SentimentModel
    from sentimentops.steps.serve.records import record

    model = SentimentModel("sentiment", tiny_model_dir, ModelInfo("sentiment", "1"))
    assert model.load()
    try:
        served = model.encode(texts)  # the predictor's path: limits, then its TextEncoder
        probs = np.concatenate([model._run([e]) for e in served])
    finally:
        model.stop()
    lines = [json.dumps(record("1", e.length, e.truncated, p, e.content, ts=0.0)) for e, p in zip(served, probs,
                                                                                                 strict=True)]
    recorded, versions = parse_records(lines)  # what the drift monitor reads back
    assert versions == ["1"] * len(texts)

    encoded = encode(tiny_model_dir, texts)  # evaluate's reference-building path
    reference = drift_features(encoded, probs)
    for name in ("input_tokens", "confidence", "predicted_label", "content"):
        np.testing.assert_array_equal(reference.column(name), recorded.column(name), err_msg=name)
    # evaluate scores what is served: the same tokens (truncated at the limit) and the same probabilities
    assert [e.ids for e in encoded] == [e.ids for e in served]
    assert encoded[3].length == MAX_TOKENS and encoded[3].truncated
    evaluated = score_torch(tiny_model_dir, encoded, precision="fp32")
    np.testing.assert_allclose(evaluated, probs, atol=1e-5)


def test_content_share_uses_the_special_tokens_mask_only():
    tokens = ["[CLS]", "[UNK]", "un", "##believ", "##able", "[SEP]"]
    # [UNK] stands for text the vocabulary lacks: a word, not a special token
    assert content_share(tokens, [1, 0, 0, 0, 0, 1]) == pytest.approx(2 / 4)
    assert content_share(["[CLS]", "[SEP]"], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        content_share(["a", "b"], [0])


def test_label_rule_at_the_boundary():
    assert LABELS.index("negative") == 0 and LABELS.index("positive") == 1
    assert label_of(0.5) == "positive"  # a tie goes to positive
    assert label_of(float(np.nextafter(0.5, 0))) == "negative"
    assert label_of(0.0) == "negative" and label_of(1.0) == "positive"
    probs = np.array([0.0, 0.49999, 0.5, 0.7])
    assert labels_of(probs).tolist() == ["negative", "negative", "positive", "positive"]
    assert class_ids_of(probs).tolist() == [0, 0, 1, 1]
    assert [label_of(p) for p in probs] == labels_of(probs).tolist()


def test_model_folder_reader_on_a_registered_folder(tmp_path):
    root = tmp_path / "model"
    for sub in ("artifacts/hf", "artifacts/onnx"):
        (root / sub).mkdir(parents=True)
    (root / "MLmodel").write_text(
        "run_id: r7\nflavors:\n  python_function:\n    artifacts:\n"
        "      model_dir: {path: artifacts/hf}\n      onnx: {path: artifacts/onnx}\n"
        "      drift_reference: {path: artifacts/drift_reference.json}\n")
    folder = read_model_folder(root)
    assert folder == ModelFolder(root, root / "artifacts/hf", root / "artifacts/onnx",
                                 root / "artifacts/drift_reference.json", "r7")
    assert folder.onnx_model is None and folder.export_report is None  # no export on disk yet
    (root / "artifacts/onnx/model.onnx").write_bytes(b"")
    report = ExportReport("int8", 0.8, 0.799, 0.1, True, "t.parquet", 10, 1.0)
    (root / "artifacts/onnx/export.json").write_text(json.dumps(asdict(report)))
    assert folder.onnx_model == root / "artifacts/onnx/model.onnx"
    assert folder.export_report == report and folder.export_report.backend == "onnx-int8"
    # the HF folder inside a downloaded registered model leads back to the registered root
    assert find_model_root(root / "artifacts/hf") == root
    assert find_model_root(tmp_path) == tmp_path


def test_model_folder_reader_on_a_plain_folder_and_a_broken_mlmodel(tmp_path):
    assert read_model_folder(tmp_path) == ModelFolder(tmp_path, tmp_path)
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"")
    assert read_model_folder(tmp_path).onnx_dir == tmp_path / "onnx"
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts: {}\n")
    with pytest.raises(FileNotFoundError, match="model_dir"):
        read_model_folder(tmp_path)


def test_keep_head_tail_keeps_the_first_quarter_and_the_end():
    from sentimentops.steps.core.contract import head_tokens, keep_head_tail

    seq = list(range(1000))
    cut = keep_head_tail(seq, 512)
    assert len(cut) == 512 and head_tokens(512) == 128
    assert cut[:128] == list(range(128)) and cut[128:] == list(range(1000 - 384, 1000))
    assert keep_head_tail(seq[:512], 512) == seq[:512]  # fits: unchanged
    assert keep_head_tail(list(range(10)), 4) == [0, 7, 8, 9]  # head 1 ([CLS]) + tail 3


def test_training_serving_and_the_pyfunc_cut_a_long_review_alike(tiny_model_dir, imdb_dir):
    """One rule, three paths: the train step's tokenize, the predictor's TextEncoder and the registered pyfunc's
    tokenizer all keep the same ids of a review over the limit ([CLS] first, [SEP] last)."""
    from transformers import AutoTokenizer

    from sentimentops.steps.core.backends import TextEncoder
    from sentimentops.steps.core.contract import keep_head_tail
    from sentimentops.steps.train.cli import tokenize

    reviews = pd.read_parquet(imdb_dir / "sample_test.parquet")["text"].tolist()
    long = max(reviews, key=len) + " the very last words"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    served = TextEncoder(tiny_model_dir, MAX_TOKENS).encode([long])[0]
    trained = tokenize(tok, [long], MAX_TOKENS)[0]
    full = tok(long, truncation=False)["input_ids"]
    assert len(full) > MAX_TOKENS and served.truncated
    assert served.ids == trained == keep_head_tail(full, MAX_TOKENS)
    assert served.ids[0] == tok.cls_token_id and served.ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(served.ids[-4:-1]) == tok.tokenize("the very last words")[-3:]
    short = TextEncoder(tiny_model_dir, 128).encode([long])[0]  # a shorter budget: the same rule (training's)
    assert short.ids == tokenize(tok, [long], 128)[0] and len(short.ids) == 128
