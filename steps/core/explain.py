"""Word-level occlusion explanations of one review through any scoring function (docs/serving.md, Explanations).

Why occlusion: it needs forward passes only, so it works the same through every backend the predictor has (ONNX
int8 and fp32, torch) and needs no torch in the serve image (gradients would); it measures exactly what a reader
asks ("how much did this word move P(positive)?"); and its cost is known before it starts: 1 + min(words,
max_words) forward passes of at most max_tokens tokens each.
Why words and not WordPiece tokens: "unwatchable" is "un ##watch ##able"; taking out one piece leaves a different
word, not no word, and readers judge words. A token starting with `##` continues the previous word.
Why the word is deleted and not replaced by [MASK] or [UNK] (both still available, `occlusion`): on the trained
model that is served, deletion's weights were as faithful as [UNK]'s and more than [MASK]'s (ERASER
comprehensiveness, docs/serving.md has the numbers; the untrained tiny test model prefers replacement, likely
because a deletion shifts every later position); and a deletion weight means what a reader assumes: P(positive) of
the review minus P(positive) of the review without the word, which two predictions reproduce.

Which tokens the model sees: the same head + tail cut as the predictor (contract.keep_head_tail) at `max_tokens`;
a word cut off entirely is not attributed (`attributed_words` < `total_words` then says so), and neither is any
word after the first `max_words` the model sees.

Pure: no HTTP, no torch; `tokenizers` is imported only where a tokenizer is copied. The predictor's `:explain`
route and evaluate's error report call `Explainer` through the backend they already hold (`backend_scorer`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sentimentops.steps.core.contract import CONTINUATION_PREFIX, MAX_TOKENS, keep_head_tail, label_of

if TYPE_CHECKING:
    from tokenizers import Tokenizer

METHOD = "occlusion"
OCCLUSIONS = ("delete", "mask", "unk")  # delete the word's tokens, or replace each by [MASK] / [UNK]
ScoreIds = Callable[[list[list[int]]], np.ndarray]  # rows of token ids ([CLS] ... [SEP]) -> P(positive) per row


@dataclass(frozen=True)
class Tokenized:
    """One text's tokens, untruncated: ids, WordPiece strings, character offsets into the text, special or not."""

    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    special: tuple[bool, ...]


@dataclass(frozen=True)
class Word:
    """A word: its text, character span in the review and the positions of its tokens in `Tokenized`."""

    text: str
    start: int
    end: int
    positions: tuple[int, ...]


@dataclass(frozen=True)
class WordWeight:
    """A word's attribution: P(positive) of the review minus P(positive) without the word (> 0: pushes positive)."""

    word: str
    start: int
    end: int
    weight: float


@dataclass(frozen=True)
class Explanation:
    label: str
    p_positive: float
    words: tuple[WordWeight, ...]  # the attributed words, in text order
    top: tuple[WordWeight, ...]    # the top_k of `words` by |weight|
    attributed_words: int
    total_words: int               # words in the whole text, seen or not
    truncated: bool                # more than max_tokens tokens: the model saw the head + tail cut
    forward_passes: int            # rows scored: 1 + attributed_words
    model_calls: int               # score_ids calls (batches)
    method: str = METHOD
    occlusion: str = "delete"


def tokenized_from(encoding: Any) -> Tokenized:
    """A `tokenizers.Encoding` (or anything with ids, tokens, offsets, special_tokens_mask) -> Tokenized."""
    return Tokenized(tuple(encoding.ids), tuple(encoding.tokens), tuple(tuple(o) for o in encoding.offsets),
                     tuple(bool(s) for s in encoding.special_tokens_mask))


def group_words(text: str, tokenized: Tokenized) -> list[Word]:
    """Non-special tokens grouped into words: a `##` token continues the word before it. A word's span runs from
    its first piece's start to its last piece's end, so `text[start:end]` is the word as written (original case
    and accents; the tokenizer's offsets point into the raw text)."""
    groups: list[list[int]] = []
    for pos, (token, special) in enumerate(zip(tokenized.tokens, tokenized.special, strict=True)):
        if special:
            continue
        if groups and token.startswith(CONTINUATION_PREFIX) and groups[-1][-1] == pos - 1:
            groups[-1].append(pos)
        else:
            groups.append([pos])
    words = []
    for positions in groups:
        start, end = tokenized.offsets[positions[0]][0], tokenized.offsets[positions[-1]][1]
        words.append(Word(text[start:end], start, end, tuple(positions)))
    return words


def _score(score_ids: ScoreIds, rows: list[list[int]], batch_tokens: int) -> tuple[np.ndarray, int]:
    """All rows in calls of at most `batch_tokens` padded tokens (at least one row per call); (probs, calls)."""
    probs = np.zeros(len(rows), dtype=np.float64)
    calls, start = 0, 0
    while start < len(rows):
        stop = start + 1
        while stop < len(rows) and (stop + 1 - start) * max(len(r) for r in rows[start : stop + 1]) <= batch_tokens:
            stop += 1
        out = np.asarray(score_ids(rows[start:stop]), dtype=np.float64).reshape(-1)
        if out.shape[0] != stop - start:
            raise ValueError(f"score_ids returned {out.shape[0]} scores for {stop - start} rows")
        probs[start:stop] = out
        calls, start = calls + 1, stop
    return probs, calls


def explain(text: str, tokenized: Tokenized, score_ids: ScoreIds, *, max_words: int = 64,
            max_tokens: int = MAX_TOKENS, top_k: int = 5, occlusion: str = "delete",
            replace_with: int | None = None, batch_tokens: int = 4096) -> Explanation:
    """Occlusion attributions for one text. `tokenized` is its untruncated tokenization; the model sees
    keep_head_tail(tokens, max_tokens). Each of the first `max_words` words it sees is deleted (`occlusion`
    "delete"), or each of its tokens replaced by `replace_with` (the id of [MASK] or [UNK], named by `occlusion`),
    and all variants are scored with the original in batches of at most `batch_tokens` padded tokens:
    1 + min(words seen, max_words) rows in all."""
    if max_words < 0 or max_tokens < 2 or top_k < 0:
        raise ValueError(f"max_words >= 0, max_tokens >= 2, top_k >= 0 (got {max_words}, {max_tokens}, {top_k})")
    if (occlusion == "delete") != (replace_with is None):
        raise ValueError(f"occlusion {occlusion!r}: replace_with is the replacing token's id, and only with it")
    words = group_words(text, tokenized)
    kept = keep_head_tail(range(len(tokenized.ids)), max_tokens)
    seen = set(kept)
    visible = [w for w in words if any(p in seen for p in w.positions)][:max_words]
    original = [tokenized.ids[p] for p in kept]
    rows = [original]
    for word in visible:
        mine = set(word.positions)
        if replace_with is None:
            rows.append([tokenized.ids[p] for p in kept if p not in mine])
        else:
            rows.append([replace_with if p in mine else tokenized.ids[p] for p in kept])
    probs, calls = _score(score_ids, rows, batch_tokens)
    p = float(probs[0])
    weights = tuple(WordWeight(w.text, w.start, w.end, p - float(q)) for w, q in zip(visible, probs[1:], strict=True))
    return Explanation(label=label_of(p), p_positive=p, words=weights, top=top_words(weights, top_k),
                       attributed_words=len(visible), total_words=len(words),
                       truncated=len(tokenized.ids) > max_tokens, forward_passes=len(rows), model_calls=calls,
                       occlusion=occlusion)


def top_words(weights: Sequence[WordWeight], k: int) -> tuple[WordWeight, ...]:
    """The k largest by |weight|; equal ones in text order."""
    order = sorted(range(len(weights)), key=lambda i: -abs(weights[i].weight))
    return tuple(weights[i] for i in order[:k])


def top_tokens(result: Explanation, k: int = 5) -> list[tuple[str, float]]:
    """(word, weight) for the k words that moved P(positive) most, either way: the compact form for reports
    (evaluate's worst errors)."""
    return [(w.word, w.weight) for w in top_words(result.words, k)]


def backend_scorer(backend: Callable[[np.ndarray, np.ndarray], np.ndarray], pad_id: int) -> ScoreIds:
    """A ScoreIds over a backend's `(ids, mask) -> P(positive)` call (core.backends: OnnxBackend, TorchBackend),
    right-padding with `pad_id` as TextEncoder.pad does, so an explanation scores what the predictor scores."""

    def score(rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return backend(ids, mask)

    return score


def untruncated(tokenizer: Tokenizer) -> Tokenizer:
    """A copy of a `tokenizers.Tokenizer` without truncation or padding: the explainer needs every token with its
    offsets and cuts by the contract's rule itself. A copy, because the predictor's tokenizer is shared by
    request threads and its settings must not change under them."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


class Explainer:
    """Explanations of single texts through one tokenizer and one scoring function (built once, reused)."""

    def __init__(self, tokenizer: Tokenizer, score_ids: ScoreIds, *, max_tokens: int = MAX_TOKENS,
                 max_words: int = 64, top_k: int = 5, occlusion: str = "delete", batch_tokens: int = 4096):
        if occlusion not in OCCLUSIONS:
            raise ValueError(f"occlusion must be one of {OCCLUSIONS}, got {occlusion!r}")
        self.tokenizer = untruncated(tokenizer)
        self.score_ids = score_ids
        self.max_tokens, self.max_words, self.top_k, self.batch_tokens = max_tokens, max_words, top_k, batch_tokens
        self.occlusion = occlusion
        self.replace_with: int | None = None
        if occlusion != "delete":
            token = "[MASK]" if occlusion == "mask" else "[UNK]"
            found = self.tokenizer.token_to_id(token)
            if found is None:
                raise ValueError(f"occlusion {occlusion!r}: the tokenizer has no {token} token")
            self.replace_with = int(found)

    def tokenize(self, text: str) -> Tokenized:
        return tokenized_from(self.tokenizer.encode(text))

    def __call__(self, text: str) -> Explanation:
        return explain(text, self.tokenize(text), self.score_ids, max_words=self.max_words,
                       max_tokens=self.max_tokens, top_k=self.top_k, occlusion=self.occlusion,
                       replace_with=self.replace_with, batch_tokens=self.batch_tokens)
