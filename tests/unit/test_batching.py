"""Length bucketing, batch plans and collation (sentimentops.steps.core.buckets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sentimentops.steps.core.buckets import (
    bucket_length,
    bucket_lengths,
    collate,
    padding_overhead,
    plan_batches,
    plan_inference,
    shard_batch,
)


@pytest.fixture
def lengths() -> np.ndarray:
    # IMDB-like: a long tail truncated at 512 (docs/measurements.md: mean 275, 15% at 512)
    gen = np.random.default_rng(0)
    return np.minimum(gen.lognormal(5.4, 0.6, size=1000).astype(np.int64) + 1, 512)


@pytest.mark.parametrize(("n", "expected"), [(1, 64), (63, 64), (64, 64), (65, 128), (449, 512), (512, 512)])
def test_bucket_length_rounds_up_to_the_multiple_and_caps_at_max(n, expected):
    assert bucket_length(n, 64, 512) == expected


def test_bucket_length_caps_at_a_max_length_that_is_not_a_multiple():
    assert bucket_length(120, 64, 100) == 100
    assert bucket_lengths(np.array([1, 70, 100]), 64, 100).tolist() == [64, 100, 100]


def test_empty_sequences_are_refused():
    with pytest.raises(ValueError, match="empty"):
        bucket_length(0, 64, 512)
    with pytest.raises(ValueError, match="empty"):
        bucket_lengths(np.array([3, 0]), 64, 512)


def test_plan_covers_every_index_once_in_single_bucket_batches(lengths):
    plan = plan_batches(lengths, 32, multiple=64, max_length=512, seed=1, epoch=0)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    buckets = bucket_lengths(lengths, 64, 512)
    full = [b for b in plan if len(b) == 32]
    # at most one short batch (the pooled leftovers' tail), not one per bucket
    assert len(plan) - len(full) <= 1
    mixed = [b for b in plan if len(set(buckets[b].tolist())) > 1]
    # only batches built from the pooled leftovers may span buckets: at most 8 leftovers of < 32 each
    assert sum(len(b) for b in mixed) < 8 * 32
    # shapes stay bounded: 8 buckets (cuDNN plans / compiled graphs)
    assert len({int(buckets[b].max()) for b in plan}) <= 8


def test_plan_is_deterministic_per_seed_and_epoch_and_shuffled(lengths):
    a = plan_batches(lengths, 32, multiple=64, max_length=512, seed=1, epoch=0)
    b = plan_batches(lengths, 32, multiple=64, max_length=512, seed=1, epoch=0)
    c = plan_batches(lengths, 32, multiple=64, max_length=512, seed=1, epoch=1)
    d = plan_batches(lengths, 32, multiple=64, max_length=512, seed=2, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, d, strict=True))
    # the batch order is shuffled: padded lengths do not come in sorted order
    widths = [int(bucket_lengths(lengths[x], 64, 512).max()) for x in a]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)


def test_plan_has_the_same_number_of_steps_every_epoch(lengths):
    counts = {len(plan_batches(lengths, 16, multiple=64, max_length=512, seed=0, epoch=e)) for e in range(4)}
    assert len(counts) == 1


def test_distributed_plan_gives_every_rank_a_near_equal_shard(lengths):
    plan = plan_batches(lengths, 8, multiple=64, max_length=512, seed=0, epoch=0, world_size=2)
    assert all(len(b) <= 16 for b in plan)
    for b in plan:
        r0, r1 = shard_batch(b, 0, 2), shard_batch(b, 1, 2)
        assert len(r0) >= 1 and len(r1) >= 1 and abs(len(r0) - len(r1)) <= 1
        assert sorted(np.concatenate([r0, r1]).tolist()) == sorted(b.tolist())


def test_distributed_plan_drops_a_final_batch_too_small_to_shard():
    lengths = np.full(17, 10)  # one bucket: 2 global batches of 8 and a leftover of 1
    plan = plan_batches(lengths, 4, multiple=64, max_length=512, seed=0, epoch=0, world_size=2)
    assert [len(b) for b in plan] == [8, 8]


def test_collate_pads_right_to_the_bucket_and_masks_padding():
    ids = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    batch = collate(ids, np.array([2, 0]), pad_id=0, multiple=4, max_length=16, labels=[1, 0, 1])
    assert batch.input_ids.tolist() == [[9, 10, 11, 12, 13, 0, 0, 0], [5, 6, 7, 0, 0, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch.labels.tolist() == [1, 1]
    assert batch.n_tokens == 8 and batch.size == 2 and batch.padded_length == 8
    assert batch.input_ids.dtype == torch.int64


def test_collate_pad_to_and_length_guard():
    batch = collate([[1, 2]], np.array([0]), pad_id=3, multiple=64, max_length=512, pad_to=512)
    assert batch.padded_length == 512 and batch.labels is None and int(batch.input_ids[0, 5]) == 3
    with pytest.raises(ValueError, match="max_length"):
        collate([[1] * 20], np.array([0]), pad_id=0, multiple=8, max_length=16)


def test_inference_plan_is_longest_first_and_respects_the_token_budget(lengths):
    plan = plan_inference(lengths, 64)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[flat]) <= 0)
    budget = plan_inference(lengths, 64, max_tokens=64 * 128)
    assert sorted(np.concatenate(budget).tolist()) == list(range(len(lengths)))
    for b in budget:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 64 * 128
    # short reviews go in larger batches than the batch size alone would give
    assert max(len(b) for b in budget) > 64


def test_padding_overhead_shrinks_with_a_finer_multiple(lengths):
    # why CPU runs use multiple 8: about 1% padding instead of about 10% at 64 on IMDB lengths
    fine, coarse, full = (padding_overhead(lengths, m, 512) for m in (8, 64, 512))
    assert 0 <= fine < coarse < full
    assert fine < 0.03 and coarse < 0.2
    assert padding_overhead(np.array([64, 128]), 64, 512) == 0.0
