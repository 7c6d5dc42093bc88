"""FLOP counts, MFU and the throughput meter (sentimentops.steps.train.perf)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sentimentops.steps.train import perf
from sentimentops.steps.train.perf import (
    FlopModel,
    ThroughputMeter,
    known_peak_flops,
    matmul_params,
    measure_matmul_peak,
)


def test_matmul_params_count_linear_weights_only():
    model = nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    assert matmul_params(model) == 8 * 16 + 16 * 2


def test_train_flops_follow_the_6n_plus_attention_rule():
    fm = FlopModel(matmul_params=1000, n_layers=2, d_model=4)
    lengths = np.array([3, 5])
    expected = 6 * 1000 * 8 + 12 * 2 * 4 * (9 + 25)
    assert fm.train_flops(lengths) == expected
    assert fm.forward_flops(lengths) == pytest.approx(expected / 3)


def test_flop_model_reads_distilbert_and_bert_configs():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    torch.manual_seed(0)
    d = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2,
                                                             hidden_dim=64))
    fm = FlopModel.from_model(d)
    assert (fm.n_layers, fm.d_model) == (2, 32)
    # per layer q,k,v,out (4 * 32^2) + ffn (2 * 32 * 64); head pre_classifier 32^2 + classifier 32 * 2
    assert fm.matmul_params == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32 + 32 * 2
    b = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3,
                                                 num_attention_heads=2, intermediate_size=64))
    assert (FlopModel.from_model(b).n_layers, FlopModel.from_model(b).d_model) == (3, 32)


def test_known_peak_is_none_on_cpu():
    assert known_peak_flops("cpu") is None


def test_matmul_peak_measures_a_positive_rate_on_cpu():
    torch.set_num_threads(1)
    rate = measure_matmul_peak("cpu", n=128, dtype=torch.float32, iters=2)
    assert math.isfinite(rate) and rate > 1e6


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_rates_skip_warmup_and_compute_mfu(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(perf.time, "perf_counter", clock)
    meter = ThroughputMeter(peak_flops=1e12, skip=1)
    meter.restart()
    meter.add(10, 1000, 1e12)  # warm-up interval: 10 s for 10 samples
    clock.now += 10
    first = meter.read()
    assert first.samples_per_s == pytest.approx(1.0)
    assert first.mfu == pytest.approx(0.1)
    meter.add(100, 20_000, 4e12)
    clock.now += 2
    second = meter.read()
    assert second.samples_per_s == pytest.approx(50.0)
    assert second.tokens_per_s == pytest.approx(10_000.0)
    assert second.mfu == pytest.approx(2.0)  # 2e12 FLOP/s on a 1e12 peak: the meter only divides
    overall = meter.overall()  # the warm-up interval is left out
    assert overall.samples_per_s == pytest.approx(50.0)
    assert meter.seconds == pytest.approx(12.0)


def test_meter_without_peak_has_no_mfu_and_falls_back_to_all_intervals(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(perf.time, "perf_counter", clock)
    meter = ThroughputMeter(peak_flops=None, skip=3)
    meter.restart()
    meter.add(8, 80, 1.0)
    clock.now += 4
    meter.read()
    overall = meter.overall()
    assert overall.mfu is None
    assert overall.samples_per_s == pytest.approx(2.0)
