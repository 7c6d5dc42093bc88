"""The explanation core (steps/core/explain.py) with fake scoring functions: a lexicon model's words get the
weights they carry, the cost bound holds (1 + min(words, max_words) rows), `##` pieces form one word, offsets point
back into the text, the head + tail cut decides what is attributed, and the tokenizer copy leaves the shared one
alone. A real WordPiece tokenizer over a fixed vocabulary (no training), no model."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from sentimentops.steps.core.contract import keep_head_tail
from sentimentops.steps.core.explain import (
    Explainer,
    Tokenized,
    backend_scorer,
    explain,
    group_words,
    tokenized_from,
    top_tokens,
)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "film", "was", "great", "dull", "plot", "and", "un", "##watch", "##able", "cafe", "a", ",", ".",
         "w", "##0", "##1", "##2", "##3", "##4", "##5", "##6", "##7", "##8", "##9"]
VOCAB = {token: i for i, token in enumerate(SPECIAL + WORDS)}
LEXICON = {VOCAB["great"]: 3.0, VOCAB["dull"]: -2.0, VOCAB["un"]: -1.0}


def wordpiece(truncate_at: int | None = None) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])])
    if truncate_at:
        tok.enable_truncation(max_length=truncate_at)
    return tok


def lexicon(rows: list[list[int]]) -> np.ndarray:
    """P(positive) = sigmoid(sum of the lexicon weights of the tokens): a model whose reasons are known."""
    return np.array([1 / (1 + math.exp(-sum(LEXICON.get(i, 0.0) for i in row))) for row in rows])


class Counting:
    """A scoring function that records every call (rows per call, padded size)."""

    def __init__(self, inner=lexicon):
        self.inner, self.calls = inner, []

    def __call__(self, rows: list[list[int]]) -> np.ndarray:
        self.calls.append(rows)
        return self.inner(rows)

    @property
    def rows(self) -> int:
        return sum(len(c) for c in self.calls)


def tokenized(text: str) -> Tokenized:
    return tokenized_from(wordpiece().encode(text))


def test_the_lexicon_word_gets_the_largest_weight_with_its_sign():
    text = "The film was great, the plot was dull."
    result = explain(text, tokenized(text), lexicon, top_k=3)
    assert result.label == "positive" and result.p_positive == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert result.top[0].word == "great" and result.top[0].weight > 0
    assert result.top[1].word == "dull" and result.top[1].weight < 0
    neutral = [w for w in result.words if w.word not in ("great", "dull")]
    assert all(w.weight == pytest.approx(0.0) for w in neutral)
    # weight = p(review) - p(review without the word)
    assert result.top[0].weight == pytest.approx(result.p_positive - 1 / (1 + math.exp(2.0)))
    assert [w.word for w in result.words] == ["The", "film", "was", "great", ",", "the", "plot", "was", "dull", "."]
    assert (result.method, result.occlusion, result.attributed_words, result.total_words) == (
        "occlusion", "delete", 10, 10)
    assert top_tokens(result, 2) == [("great", result.top[0].weight), ("dull", result.top[1].weight)]


def test_wordpiece_continuations_form_one_word_and_offsets_point_into_the_text():
    text = "  Unwatchable film, CAFÉ   great!"
    tok = tokenized(text)
    assert tok.tokens[1:4] == ("un", "##watch", "##able")
    words = group_words(text, tok)
    assert [w.text for w in words] == ["Unwatchable", "film", ",", "CAFÉ", "great", "!"]
    assert words[0].positions == (1, 2, 3)
    for w in words:
        assert text[w.start:w.end] == w.text  # original case and accents: offsets index the raw text
    result = explain(text, tok, lexicon)
    unwatchable = result.words[0]
    assert (unwatchable.word, unwatchable.start, unwatchable.end) == ("Unwatchable", 2, 13)
    assert unwatchable.weight < 0  # "un" (-1) goes with the whole word; "!" is [UNK] and a word of its own
    assert result.words[-1].word == "!" and result.words[-1].weight == pytest.approx(0.0)


@pytest.mark.parametrize(("n_words", "max_words"), [(3, 64), (64, 64), (100, 10), (100, 0), (5, 5)])
def test_cost_is_one_plus_min_words_max_words_forward_passes(n_words, max_words):
    text = " ".join(f"w{i % 10}" for i in range(n_words))  # "w" + "##<digit>": two tokens per word
    scorer = Counting()
    result = explain(text, tokenized(text), scorer, max_words=max_words)
    expected = 1 + min(n_words, max_words)
    assert scorer.rows == result.forward_passes == expected
    assert (result.attributed_words, result.total_words) == (min(n_words, max_words), n_words)
    assert len(result.words) == result.attributed_words and result.model_calls == len(scorer.calls)
    assert scorer.calls[0][0] == list(tokenized(text).ids)  # the original comes first, uncut


def test_calls_stay_within_the_token_budget_and_batching_does_not_change_weights():
    text = "the film was great and the plot was dull " * 6
    tok = tokenized(text)
    small, large = Counting(), Counting()
    a = explain(text, tok, small, batch_tokens=200)
    b = explain(text, tok, large, batch_tokens=100_000)
    assert len(large.calls) == 1 and len(small.calls) > 1
    assert all(len(rows) * max(len(r) for r in rows) <= 200 for rows in small.calls)
    assert a.words == b.words and a.model_calls == len(small.calls)
    one_row = Counting()
    explain(text, tok, one_row, batch_tokens=1)  # a budget below one row still makes progress: a row per call
    assert all(len(rows) == 1 for rows in one_row.calls)


def test_head_tail_cut_decides_what_the_model_sees_and_what_is_attributed():
    text = "great " + "the " * 30 + "dull"
    tok = tokenized(text)
    scorer = Counting()
    result = explain(text, tok, scorer, max_tokens=12)
    kept = keep_head_tail(list(tok.ids), 12)
    assert scorer.calls[0][0] == kept and all(len(r) <= 12 for r in scorer.calls[0])
    assert result.truncated and result.total_words == 32
    assert result.attributed_words == 10  # [CLS] + 2 head words, 8 tail words + [SEP]
    assert result.words[0].word == "great" and result.words[-1].word == "dull"
    assert result.words[0].start == 0 and result.words[-1].end == len(text)
    assert not explain("great film", tokenized("great film"), lexicon, max_tokens=12).truncated


def test_mask_occlusion_replaces_and_keeps_the_length():
    text = "the unwatchable film"
    tok = tokenized(text)
    scorer = Counting()
    result = explain(text, tok, scorer, occlusion="mask", replace_with=VOCAB["[MASK]"])
    rows = scorer.calls[0]
    assert {len(r) for r in rows} == {len(tok.ids)}
    assert rows[2] == [VOCAB["[CLS]"], VOCAB["the"]] + [VOCAB["[MASK]"]] * 3 + [VOCAB["film"], VOCAB["[SEP]"]]
    assert result.occlusion == "mask" and result.words[1].weight < 0
    with pytest.raises(ValueError, match="replace_with"):
        explain(text, tok, lexicon, occlusion="mask")


def test_empty_of_words_costs_one_pass():
    tok = Tokenized((VOCAB["[CLS]"], VOCAB["[SEP]"]), ("[CLS]", "[SEP]"), ((0, 0), (0, 0)), (True, True))
    result = explain("", tok, lexicon)
    assert (result.forward_passes, result.attributed_words, result.words, result.top) == (1, 0, (), ())


def test_explainer_uses_an_untruncated_copy_and_leaves_the_shared_tokenizer_alone():
    shared = wordpiece(truncate_at=8)
    text = "great " + "the " * 20 + "dull"
    explainer = Explainer(shared, lexicon, max_tokens=8, top_k=2)
    result = explainer(text)
    assert result.total_words == 22 and result.truncated  # every word counted: the copy does not truncate
    assert result.words[-1].word == "dull"  # the tail is seen, as the predictor's head + tail cut sees it
    assert shared.truncation is not None and shared.truncation["max_length"] == 8
    assert Explainer(shared, lexicon, occlusion="unk").replace_with == VOCAB["[UNK]"]
    with pytest.raises(ValueError, match="occlusion"):
        Explainer(shared, lexicon, occlusion="zero")


def test_backend_scorer_right_pads_with_the_pad_id_and_masks():
    seen = {}

    def backend(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        seen.update(ids=ids, mask=mask)
        return mask.sum(axis=1) / 10

    probs = backend_scorer(backend, pad_id=7)([[1, 2, 3], [4]])
    assert seen["ids"].tolist() == [[1, 2, 3], [4, 7, 7]] and seen["ids"].dtype == np.int64
    assert seen["mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert probs.tolist() == [0.3, 0.1]
