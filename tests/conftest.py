"""Shared fixtures: offline switches, the shared IMDB data beside the checkout, a tiny DistilBERT, a state folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline and deterministic, for this process and every step subprocess it starts (STACK-NOTES, offline switches).
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    # One torch thread in step subprocesses too: under a busy second core, 2 threads ran ~50x slower (STACK-NOTES).
    "SENTIMENTOPS_TRAIN_NUM_THREADS": "1",
    "SENTIMENTOPS_EVALUATE_NUM_THREADS": "1",
})

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    """The real IMDB reviews (shared/data beside the checkout)."""
    path = SHARED_DATA / "imdb"
    if not (path / "sample_train.parquet").is_file():
        pytest.skip(f"the shared IMDB data is not at {path}")
    return path


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh SENTIMENTOPS_HOME (MLflow sqlite, DVC remote, runs) per test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SENTIMENTOPS_HOME", str(path))
    monkeypatch.setenv("SENTIMENTOPS_PROFILE", "local")
    return path


def build_tiny_distilbert(folder: Path, texts: list[str], seed: int = 0, vocab_size: int = 1500) -> Path:
    """A real DistilBERT checkpoint, tiny: a WordPiece tokenizer trained on `texts` and a 2-layer, 32-wide model,
    saved with save_pretrained so the steps load it through the real from_pretrained path (STACK-NOTES)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                              ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=512, pad_token_id=tok.token_to_id("[PAD]"), num_labels=2)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_builder():
    """build_tiny_distilbert, for tests that need their own tiny model (other texts or vocabulary size)."""
    return build_tiny_distilbert


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, imdb_dir) -> Path:
    import pandas as pd

    texts = pd.read_parquet(imdb_dir / "sample_train.parquet")["text"].head(400).tolist()
    return build_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"), texts)
