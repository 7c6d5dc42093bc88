"""Shared fixtures: offline switches, the real test data (tests/testdata.py), a tiny DistilBERT, a state folder;
and a closing `skips:` line for every run."""
from __future__ import annotations

import os
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:  # tests/ is no package: found under any --import-mode
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import testdata

# Offline and deterministic, for this process and every step subprocess it starts (docs/measurements.md).
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    # One torch thread in step subprocesses too: under a busy second core, 2 threads ran ~50x slower
    # (docs/measurements.md, CPU threads).
    "SENTIMENTOPS_TRAIN_NUM_THREADS": "1",
    "SENTIMENTOPS_EVALUATE_NUM_THREADS": "1",
})

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@cache
def _probe_once(endpoint: str) -> str | None:
    return testdata.hub_probe(endpoint)


_BUILDS: dict[Path, str | None] = {}


def _build_once(out: Path, env) -> str | None:
    """One download attempt per session, whichever fixture asks first (the child lifts the offline switches)."""
    if out not in _BUILDS:
        _BUILDS[out] = testdata.build_in_child(out, env)
    return _BUILDS[out]


@cache
def _data_root(files: tuple[str, ...]) -> Path:
    found = testdata.resolve(files, probe=_probe_once, build=_build_once)
    if found.root is None:
        pytest.skip(found.reason)
    return found.root


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    """The real IMDB samples: a folder with sample_train.parquet and sample_test.parquet (tests/testdata.py)."""
    return _data_root(testdata.IMDB_FILES) / "imdb"


@pytest.fixture(scope="session")
def rt_polarity_file() -> Path:
    """Rotten Tomatoes snippets (text, label): a real shift from IMDB, for drift tests (tests/testdata.py)."""
    return _data_root(testdata.RT_FILES) / "rt_polarity" / "rt_polarity.parquet"


def pytest_terminal_summary(terminalreporter):
    """One closing line, grouped by reason: `skips: 2 skipped (2: needs a Kubernetes cluster)` or `skips: none`,
    so a run that tested little says so (pytest's own `N passed, M skipped` line still comes last)."""
    if terminalreporter.config.option.collectonly:
        return
    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ").strip()] += 1
    total = sum(reasons.values())
    if not total:
        terminalreporter.write_line("skips: none")
        return
    groups = "; ".join(f"{n}: {reason}" for reason, n in reasons.most_common())
    terminalreporter.write_line(f"skips: {total} skipped ({groups})")


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A fresh SENTIMENTOPS_HOME (MLflow sqlite, DVC remote, runs) per test."""
    path = tmp_path / "home"
    monkeypatch.setenv("SENTIMENTOPS_HOME", str(path))
    monkeypatch.setenv("SENTIMENTOPS_PROFILE", "local")
    return path


def build_tiny_distilbert(folder: Path, texts: list[str], seed: int = 0, vocab_size: int = 1500) -> Path:
    """A real DistilBERT checkpoint, tiny: a WordPiece tokenizer trained on `texts` and a 2-layer, 32-wide model,
    saved with save_pretrained so the steps load it through the real from_pretrained path (docs/measurements.md,
    Test models)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The vocabulary is built here in a fixed order, not by tokenizers' WordPieceTrainer: the trainer breaks count
    # ties in no fixed order, so every process got another vocabulary and another model. Every character alone and
    # as a continuation ("##c"), so any word tokenizes without [UNK], then whole words by (-count, word).
    counts: Counter[str] = Counter(word for text in texts
                                   for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = list(dict.fromkeys(special + chars + [f"##{c}" for c in chars]))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab += words[:max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
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


@pytest.fixture()
def gcs(tmp_path, monkeypatch) -> str:
    """A real GCS API on 127.0.0.1 (the gcp-storage-emulator package, in memory) with one bucket, reached through
    google-cloud-storage as in the cluster (STORAGE_EMULATOR_HOST, anonymous): its gs:// URL. Stopped afterwards."""
    import subprocess
    import urllib.request

    from sentimentops.steps.core.client import free_port
    from sentimentops.steps.core.processes import spawn, stop, wait_for

    port, bucket = free_port(), "test-bucket"
    with (tmp_path / "emulator.log").open("w") as out:
        proc = spawn([str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", "127.0.0.1",
                      "--port", str(port), "--in-memory", "--default-bucket", bucket],
                     stdout=out, stderr=subprocess.STDOUT)

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/storage/v1/b/{bucket}", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, "gcp-storage-emulator", [proc])
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        yield f"gs://{bucket}"
    finally:
        stop(proc, grace_s=5)
