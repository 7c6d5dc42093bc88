"""The training loop and batch scoring on CPU with a tiny DistilBERT (sentimentops.steps.train.loop and its
neighbours; sentimentops.steps.core.kernels and .scoring)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sentimentops.steps.core.kernels import choose_sdpa_backend, compile_blocks, resolve_precision
from sentimentops.steps.core.scoring import predict_proba
from sentimentops.steps.train.checkpoint import CHECKPOINT_NAME
from sentimentops.steps.train.loop import LoopConfig, LoopResult, StepLog, train
from sentimentops.steps.train.optim import (
    MIN_OPTIMIZER_STEPS,
    batch_size_for,
    linear_warmup_decay,
    scaled_learning_rate,
)


def load(model_dir: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def imdb(tmp_path_factory, tiny_builder, imdb_dir):
    """(model dir, token ids, labels, pad id) for 160 IMDB sample reviews cut to 96 tokens."""
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # 2 threads on 2 busy cores ran ~50x slower (docs/measurements.md, CPU threads)
    table = pq.read_table(imdb_dir / "sample_train.parquet", columns=["text", "label"]).to_pydict()
    texts, labels = table["text"][:160], table["label"][:160]
    model_dir = tiny_builder(tmp_path_factory.mktemp("tiny"), table["text"][:400], vocab_size=800)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(texts, truncation=True, max_length=96)["input_ids"]
    return model_dir, ids, labels, tok.pad_token_id


def cfg(**kw) -> LoopConfig:
    base = {"epochs": 2, "batch_size": 16, "max_length": 96, "log_every": 4, "learning_rate": 1e-3}
    return LoopConfig(**{**base, **kw})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_cpu_bf16_is_chosen_only_where_the_cpu_has_it(tmp_path, monkeypatch):
    """issue 14: `auto` trains in bf16 on a CPU with AMX / AVX512-BF16 and falls back to fp32 elsewhere."""
    from sentimentops.steps.core import kernels

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile avx512f\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert kernels.cpu_bf16_native(str(amx)) and not kernels.cpu_bf16_native(str(plain))
    assert not kernels.cpu_bf16_native(str(tmp_path / "missing"))
    monkeypatch.setattr(kernels, "cpu_bf16_native", lambda: True)
    assert kernels.resolve_precision("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(kernels, "cpu_bf16_native", lambda: False)
    assert kernels.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_resolve_precision_and_its_guard(monkeypatch):
    from sentimentops.steps.core import kernels

    monkeypatch.setattr(kernels, "cpu_bf16_native", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_learning_rate_rules_scale_from_the_reference_batch():
    assert scaled_learning_rate(5e-5, 32, 128, "sqrt") == pytest.approx(1e-4)
    assert scaled_learning_rate(5e-5, 32, 128, "linear") == pytest.approx(2e-4)
    assert scaled_learning_rate(5e-5, 32, 128, "none") == 5e-5
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_learning_rate(5e-5, 32, 128, "cubic")


def test_schedule_warms_up_linearly_then_decays_to_zero():
    f = linear_warmup_decay(warmup_steps=4, total_steps=14)
    assert [round(f(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(9) == pytest.approx(0.5)
    assert f(14) == 0.0 and f(20) == 0.0
    assert f(0) > 0  # the first step already moves the weights


def test_same_seed_gives_identical_weights_and_logs(imdb):
    model_dir, ids, labels, pad = imdb
    logs_a: list[StepLog] = []
    a, b = load(model_dir), load(model_dir)
    res_a = train(a, ids, labels, cfg(), pad_id=pad, device="cpu", progress=False, on_log=logs_a.append)
    res_b = train(b, ids, labels, cfg(), pad_id=pad, device="cpu", progress=False)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert res_a.final_loss == res_b.final_loss
    assert not all(torch.equal(wa[k], v) for k, v in weights(load(model_dir)).items())  # it trained
    # 160 reviews in batches of 16, 2 epochs: 20 steps, a log every 4 (loss read on the host only there)
    assert res_a.steps == 20 and res_a.epochs_completed == 2 and res_a.resumed_from_step == 0
    assert [log.step for log in logs_a] == [4, 8, 10, 12, 16, 20]  # + each epoch end
    assert all(math.isfinite(log.loss) and log.tokens_per_s > 0 and log.mfu is None for log in logs_a)
    assert res_a.precision == "fp32" and res_a.device == "cpu" and res_a.world_size == 1
    # sqrt rule: 1e-3 at the reference batch 32 -> 1e-3 * sqrt(16 / 32) at batch 16
    assert res_a.learning_rate == pytest.approx(1e-3 / math.sqrt(2))
    assert logs_a[-1].learning_rate == 0.0


def test_a_different_seed_gives_different_weights(imdb):
    model_dir, ids, labels, pad = imdb
    a, b = load(model_dir), load(model_dir)
    train(a, ids, labels, cfg(epochs=1), pad_id=pad, device="cpu", progress=False)
    train(b, ids, labels, cfg(epochs=1, seed=7), pad_id=pad, device="cpu", progress=False)
    assert not all(torch.equal(v, weights(b)[k]) for k, v in weights(a).items())


def test_resume_after_max_steps_equals_an_uninterrupted_run(imdb, tmp_path):
    model_dir, ids, labels, pad = imdb
    full = load(model_dir)
    train(full, ids, labels, cfg(), pad_id=pad, device="cpu", progress=False)

    part = load(model_dir)
    first = train(part, ids, labels, cfg(max_steps=7), pad_id=pad, device="cpu", checkpoint_dir=tmp_path,
                  progress=False)
    assert first.steps == 7 and (tmp_path / CHECKPOINT_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # the atomic write left no temp file
    # a fresh process would start from the pretrained weights again: so does this call
    resumed_model = load(model_dir)
    epochs: list[int] = []
    second = train(resumed_model, ids, labels, cfg(), pad_id=pad, device="cpu", checkpoint_dir=tmp_path,
                   progress=False, on_epoch_end=lambda e, r: epochs.append(e))
    assert second.resumed_from_step == 7 and second.steps == 20 and second.epochs_completed == 2
    assert epochs == [1, 2]  # step 7 was inside epoch 1 (10 steps per epoch)
    expected = weights(full)
    assert all(torch.equal(expected[k], v) for k, v in weights(resumed_model).items())
    # a finished run resumes to "nothing left to do"
    again = train(load(model_dir), ids, labels, cfg(), pad_id=pad, device="cpu", checkpoint_dir=tmp_path,
                  progress=False)
    assert again.resumed_from_step == 20 and again.steps == 20


def test_resume_refuses_a_checkpoint_with_another_batch_plan(imdb, tmp_path):
    model_dir, ids, labels, pad = imdb
    train(load(model_dir), ids, labels, cfg(max_steps=2), pad_id=pad, device="cpu", checkpoint_dir=tmp_path,
          progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train(load(model_dir), ids, labels, cfg(batch_size=8), pad_id=pad, device="cpu",
              checkpoint_dir=tmp_path, progress=False)


@pytest.mark.slow  # trains for ~12 s: left out of `make test-fast`
def test_the_loop_learns_a_separable_task(imdb):
    """Label 1 iff the review contains token 7 (planted): a working loop must reach high accuracy."""
    model_dir, ids, _, pad = imdb
    gen = np.random.default_rng(0)
    planted, labels = [], []
    for row in ids:
        y = int(gen.random() < 0.5)
        body = [t if t != 7 else 8 for t in row[1:-1]]
        if y:
            body[int(gen.integers(len(body)))] = 7
        planted.append([row[0], *body, row[-1]])
        labels.append(y)
    model = load(model_dir)
    res = train(model, planted, labels, cfg(epochs=30, learning_rate=3e-3), pad_id=pad, device="cpu",
                progress=False)
    probs = predict_proba(model, planted, pad_id=pad, device="cpu")
    assert ((probs > 0.5) == np.array(labels)).mean() >= 0.9, res.final_loss


def test_predict_proba_keeps_the_original_order_and_ignores_padding(imdb):
    model_dir, ids, _, pad = imdb
    model = load(model_dir)
    model.train()  # from_pretrained returns eval mode; scoring must switch dropout off and restore this
    subset = ids[:40]
    probs = predict_proba(model, subset, pad_id=pad, device="cpu", batch_size=8)
    # one at a time: no padding at all, so the batched (sorted, padded, masked) result must match it
    single = np.array([predict_proba(model, [x], pad_id=pad, device="cpu", batch_size=1)[0] for x in subset])
    np.testing.assert_allclose(probs, single, atol=1e-5)
    perm = np.random.default_rng(1).permutation(len(subset))
    shuffled = predict_proba(model, [subset[i] for i in perm], pad_id=pad, device="cpu", batch_size=8)
    np.testing.assert_allclose(shuffled, probs[perm], atol=1e-6)
    assert probs.dtype == np.float32 and ((probs >= 0) & (probs <= 1)).all()
    assert model.training  # scoring restores the caller's mode
    assert predict_proba(model, [], pad_id=pad, device="cpu").shape == (0,)


def test_cpu_choices_skip_sdpa_timing_and_compilation(imdb):
    model_dir, ids, labels, pad = imdb
    assert choose_sdpa_backend(load(model_dir), None, torch.device("cpu"), "fp32") == ("default", {})
    res = train(load(model_dir), ids[:32], labels[:32], cfg(epochs=1, compile="auto"), pad_id=pad,
                device="cpu", progress=False)
    assert isinstance(res, LoopResult) and res.sdpa_backend == "default" and not res.compiled


def test_regional_compile_wraps_each_transformer_block(imdb):
    model = load(imdb[0])
    assert compile_blocks(model) == 2  # the 2 layers of the tiny DistilBERT (compiled lazily, on first call)


def test_regional_compile_static_shapes_raises_the_recompile_limit_and_is_idempotent(imdb):
    import torch._dynamo.config as dynamo_config

    model = load(imdb[0])
    assert compile_blocks(model, "static") == 2 and model._trainloop_compiled == "static"
    limit = getattr(dynamo_config, "recompile_limit", None) or dynamo_config.cache_size_limit
    assert limit >= 16  # 8 buckets of 64 plus leftover batches, in training and in scoring
    wrapped = model.distilbert.transformer.layer[0]._compiled_call_impl
    assert compile_blocks(model, "static") == 2  # same mode: nothing re-wrapped
    assert model.distilbert.transformer.layer[0]._compiled_call_impl is wrapped
    with pytest.raises(ValueError):
        compile_blocks(model, "sometimes")


def test_batch_size_by_data_size():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert batch_size_for(10_000, 2, cpu) == 32
    # the quality check's 10k reviews x 2 epochs: 128 would leave 156 steps (under-trained in runs 1-2)
    assert batch_size_for(10_000, 2, cuda) == 64
    assert batch_size_for(25_000, 1, cuda) == 64  # one IMDB epoch: 195 steps at 128
    assert batch_size_for(25_000, 3, cuda) == 128  # 292 steps at 256, 585 at 128
    assert batch_size_for(25_000, 4, cuda) == 256
    assert batch_size_for(100_000, 1, cuda) == 256
    assert batch_size_for(100_000, 1, cuda, world_size=4) == 64
    assert batch_size_for(256 * MIN_OPTIMIZER_STEPS, 1, cuda) == 256


def test_batch_size_zero_resolves_by_data_size_and_bad_options_are_refused(imdb):
    model_dir, ids, labels, pad = imdb
    res = train(load(model_dir), ids[:64], labels[:64], cfg(epochs=1, batch_size=0), pad_id=pad, device="cpu",
                progress=False)
    assert res.batch_size == 32 and res.steps == 2
    with pytest.raises(ValueError):
        train(load(model_dir), ids[:8], labels[:8], cfg(compile_shapes="some"), pad_id=pad, device="cpu",
              progress=False)
    with pytest.raises(ValueError):
        predict_proba(load(model_dir), ids[:4], pad_id=pad, device="cpu", compile="always")
    # compile is a CUDA option: on CPU scoring runs eager and gives the same numbers
    model = load(model_dir)
    np.testing.assert_allclose(predict_proba(model, ids[:16], pad_id=pad, device="cpu", compile="static"),
                               predict_proba(model, ids[:16], pad_id=pad, device="cpu"), atol=0)


def test_frozen_parts_keep_their_weights_and_the_rest_learns(imdb):
    """issue 14: freeze_embeddings / freeze_layers keep those weights bit-identical through training (no gradient,
    no optimizer state) while the layers above and the head move; on a model with fewer layers than asked the top
    layer still learns."""
    from sentimentops.steps.train.optim import encoder_parts, freeze

    model_dir, ids, labels, pad = imdb
    model = load(model_dir)
    before = weights(model)
    train(model, ids[:48], labels[:48], cfg(epochs=1, freeze_embeddings=True, freeze_layers=5), pad_id=pad,
          device="cpu", progress=False)  # the tiny model has 2 layers: the lowest 1 is frozen, the top one learns
    after = weights(model)
    emb, stack = encoder_parts(model)
    frozen = {n for n, _ in model.named_parameters() if not _.requires_grad}
    assert frozen and all(n.startswith(("distilbert.embeddings", "distilbert.transformer.layer.0")) for n in frozen)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(before[n], after[n])]
    assert any(n.startswith("distilbert.transformer.layer.1") for n in moved) and any("classifier" in n for n in moved)
    assert len(stack) == 2 and not any(p.requires_grad for p in emb.parameters())
    assert freeze(load(model_dir), embeddings=False, layers=0) == 0


def test_feedback_rows_are_oversampled_after_validation_was_carved():
    import pandas as pd

    from sentimentops.steps.core.production import BASE_PROVENANCE, FEEDBACK_PROVENANCE, PROVENANCE_COLUMN
    from sentimentops.steps.train.cli import oversample_feedback

    train = pd.DataFrame({"text": ["b1", "b2", "b3", "f1", "f2"], "label": [0, 1, 0, 1, 0],
                          PROVENANCE_COLUMN: [BASE_PROVENANCE] * 3 + [FEEDBACK_PROVENANCE] * 2})
    seen = oversample_feedback(train, 3, seed=7)
    assert seen["text"].value_counts().to_dict() == {"b1": 1, "b2": 1, "b3": 1, "f1": 3, "f2": 3}
    # each copy keeps its own label; the order is shuffled, the same for the same seed
    assert set(zip(seen["text"], seen["label"], strict=True)) == set(zip(train["text"], train["label"], strict=True))
    assert seen["text"].tolist() == oversample_feedback(train, 3, seed=7)["text"].tolist()
    assert seen["text"].tolist() != sorted(seen["text"].tolist(), key=["b1", "b2", "b3", "f1", "f2"].index)
    # 1 = off; no feedback rows, or a hand-made frame without the provenance column: unchanged, same object
    assert oversample_feedback(train, 1, seed=7) is train
    base_only = train[train[PROVENANCE_COLUMN] == BASE_PROVENANCE]
    assert oversample_feedback(base_only, 3, seed=7) is base_only
    bare = train.drop(columns=[PROVENANCE_COLUMN])
    assert oversample_feedback(bare, 3, seed=7) is bare


def test_feedback_repeat_is_part_of_the_checkpoint_key():
    # a resumed run must not continue a trajectory trained with another oversampling
    from sentimentops.steps.train.cli import FEEDBACK_REPEAT, TRAJECTORY, TrainSettings

    assert "feedback_repeat" in TRAJECTORY
    # every retrain (drift, cron, manual) oversamples its feedback unless told otherwise
    assert TrainSettings.model_fields["feedback_repeat"].default == FEEDBACK_REPEAT > 1
