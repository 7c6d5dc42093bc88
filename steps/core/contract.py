"""The contract between the stages: the facts that evaluate, register, the predictor, the drift monitor and the
rollout controller must agree on, each written once (docs/layout.md; the label rule, the token limit
and the model-folder layout were each written several times; the PSI 1.5 on identical traffic came from two
computations of one number).

- labels: `LABELS[class_id]`, and the one decision rule `label_of` / `labels_of` / `class_ids_of`;
- the token limit `MAX_TOKENS` the predictor truncates at (and evaluate scores at), and the one truncation rule
  (`keep_head_tail`) that training, evaluation and serving cut long reviews by;
- the registered model folder: artifact keys, file names, and the one reader `read_model_folder`;
- the ONNX export report file and its reader (written by register, read by the predictor);
- the `content` drift feature (`content_share`), one definition for evaluate's reference and the predictor.

Only the standard library, numpy and yaml: the serve image (no torch) and the pyfunc imports this module.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# ---- labels -----------------------------------------------------------------------------------------------------
LABELS = ("negative", "positive")  # index = class id: the training labels (IMDB: 0 negative, 1 positive)
THRESHOLD = 0.5  # positive iff P(positive) >= THRESHOLD (a tie goes to positive, as it always did everywhere)


def label_of(p: float) -> str:
    """The label for one P(positive)."""
    return LABELS[1] if p >= THRESHOLD else LABELS[0]


def class_ids_of(probs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Class ids (0/1, int64) for P(positive) values: what accuracy and F1 are computed on."""
    return (np.asarray(probs, dtype=np.float64) >= THRESHOLD).astype(np.int64)


def labels_of(probs: Sequence[float] | np.ndarray) -> np.ndarray:
    """Labels (strings) for P(positive) values, vectorised."""
    return np.asarray(LABELS)[class_ids_of(probs)]


# ---- the token limit --------------------------------------------------------------------------------------------
# DistilBERT's position embeddings (max_position_embeddings = 512): a longer input has no positions, so the
# predictor truncates there (or rejects, `truncation=reject`), and evaluate scores at the same length so the gated
# accuracy is the one users get (issue 11, item 7). A model with fewer positions caps it further (TextEncoder).
MAX_TOKENS = 512

# ---- which tokens of a long review are kept ----------------------------------------------------------------------
# Head + tail: the first quarter of the budget and the rest from the end ([CLS] opens the head, [SEP] closes the
# tail). Reviews state their verdict at the end as often as at the start; on IMDB keeping head and tail beats keeping
# the head alone (Sun et al., 2019, "How to Fine-Tune BERT for Text Classification?": 128 head + 382 tail best at
# 512), and it measured better here too (benchmarks/train_recipes.py). Training cuts its shorter budget the same way.
HEAD_SHARE = 0.25


def head_tokens(max_tokens: int) -> int:
    """How many of `max_tokens` come from the head of a cut instance (at least 1: [CLS])."""
    return max(1, int(max_tokens * HEAD_SHARE))


def keep_head_tail(seq: Sequence[T], max_tokens: int) -> list[T]:
    """`seq` (token ids, tokens, a mask...) cut to `max_tokens` by the head + tail rule; unchanged when it fits."""
    if len(seq) <= max_tokens:
        return list(seq)
    head = head_tokens(max_tokens)
    return [*seq[:head], *seq[len(seq) - (max_tokens - head):]]

# ---- the registered model folder --------------------------------------------------------------------------------
# register logs an MLflow pyfunc named MODEL_ARTIFACT; its MLmodel file maps each artifact key to a path
# (flavors.python_function.artifacts.<key>.path, named after the logged folder, not the key).
MLMODEL_FILE = "MLmodel"
MODEL_ARTIFACT = "model"                  # the pyfunc's name inside its run
MODEL_DIR_KEY = "model_dir"               # the Hugging Face folder (weights + tokenizer.json)
ONNX_KEY = "onnx"                         # the ONNX export folder: ONNX_MODEL_FILE + EXPORT_REPORT_FILE
DRIFT_REFERENCE_KEY = "drift_reference"   # evaluate's drift reference (DRIFT_REFERENCE_FILE)
ONNX_DIR = "onnx"                         # evaluate's output folder holding the chosen ONNX export
ONNX_MODEL_FILE = "model.onnx"
EXPORT_REPORT_FILE = "export.json"
DRIFT_REFERENCE_FILE = "drift_reference.json"


@dataclass
class ExportReport:
    """What the ONNX export decided (steps/evaluate/onnx_export.py writes it during evaluate, the predictor reads it).

    int8 is refused only on evidence that it answers worse: a paired comparison of the fp32 and int8 answers on the
    same rows (agreement, and a one-sided exact McNemar test on the rows only one of them gets right)."""

    precision: str                  # int8 | fp32: what model.onnx holds
    accuracy_fp32: float | None
    accuracy_int8: float | None
    drop_points: float | None       # (fp32 - int8) * 100, reported (the decision is the paired test's)
    int8_accepted: bool
    eval_set: str
    eval_rows: int
    seconds: float
    note: str = ""
    agreement: float | None = None          # share of rows where fp32 and int8 give the same label
    fp32_only_right: int | None = None      # McNemar's b: rows fp32 gets right and int8 wrong
    int8_only_right: int | None = None      # McNemar's c
    p_value: float | None = None            # P(b or more of b + c discordant rows | int8 no worse), exact
    alpha: float | None = None              # refuse int8 when p_value < alpha
    min_agreement: float | None = None      # ... or when agreement < min_agreement

    @property
    def backend(self) -> str:
        return f"onnx-{self.precision}"


def read_export_report(onnx_dir: Path) -> ExportReport | None:
    """The export report of an ONNX folder, or None when it has none."""
    path = Path(onnx_dir) / EXPORT_REPORT_FILE
    if not path.is_file():
        return None
    # Keys this version does not know are dropped: a model registered before the report changed stays servable
    # (the unpaired `max_drop_points` bound of earlier exports, for one).
    known = {f.name for f in fields(ExportReport)}
    return ExportReport(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


@dataclass(frozen=True)
class ModelFolder:
    """Where the pieces of a model folder are: a registered pyfunc folder (MLmodel + artifacts) or a plain Hugging
    Face folder (then `root == model_dir`, an `onnx/` subfolder counts when it holds model.onnx)."""

    root: Path
    model_dir: Path
    onnx_dir: Path | None = None
    drift_reference: Path | None = None
    run_id: str = ""

    @property
    def onnx_model(self) -> Path | None:
        """The ONNX file when the export exists on disk."""
        if self.onnx_dir is None or not (self.onnx_dir / ONNX_MODEL_FILE).is_file():
            return None
        return self.onnx_dir / ONNX_MODEL_FILE

    @property
    def export_report(self) -> ExportReport | None:
        return read_export_report(self.onnx_dir) if self.onnx_dir is not None else None


def read_model_folder(path: Path) -> ModelFolder:
    """The one reader of a model folder. FileNotFoundError when an MLmodel names no `model_dir` artifact."""
    import yaml

    root = Path(path)
    mlmodel = root / MLMODEL_FILE
    if not mlmodel.is_file():
        onnx = root / ONNX_KEY
        return ModelFolder(root, root, onnx if (onnx / ONNX_MODEL_FILE).is_file() else None)
    spec = yaml.safe_load(mlmodel.read_text()) or {}
    mapping = ((spec.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}

    def artifact(key: str) -> Path | None:
        entry = mapping.get(key)
        return root / entry["path"] if entry else None

    model_dir = artifact(MODEL_DIR_KEY)
    if model_dir is None:
        raise FileNotFoundError(f"{mlmodel}: no `{MODEL_DIR_KEY}` artifact in python_function.artifacts")
    return ModelFolder(root, model_dir, artifact(ONNX_KEY), artifact(DRIFT_REFERENCE_KEY),
                       str(spec.get("run_id") or ""))


def choose_backend(folder: ModelFolder, backend: str, gpu: bool) -> str:
    """The backend a model folder is served and batch-scored with: an explicit choice wins; `auto` is torch on a GPU,
    else the ONNX export when there is one (int8 if its registration check accepted int8, fp32 otherwise), else
    torch. One rule for the predictor (steps/serve/model.py) and `sentimentops score`, so both give the same answers."""
    if backend != "auto":
        return backend
    if not gpu and folder.onnx_model is not None:
        report = folder.export_report
        return report.backend if report is not None else "onnx-fp32"
    return "torch"


def find_model_root(path: Path) -> Path:
    """The registered folder (the one holding MLmodel) at or above `path`; `path` itself when there is none."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if (p / MLMODEL_FILE).is_file()), path)


# ---- the metrics a registered version carries ----------------------------------------------------------------------
# Register tags each version with them (a version's own numbers, readable without its run); `sentimentops lineage`
# shows them. test_<metric> for each of METRIC_TAGS (evaluate's scores on the version's own test rows), and the
# evidence beside them under these keys (evaluate's baseline, behaviour and calibration metrics).
METRIC_TAGS = ("accuracy", "f1", "roc_auc")
EVIDENCE_TAGS = ("tfidf_test_accuracy", "behaviour_pass_rate", "test_ece")


# ---- the `content` drift feature -----------------------------------------------------------------------------------
CONTINUATION_PREFIX = "##"  # WordPiece marks a piece that continues a word


def content_share(tokens: Sequence[str], special_mask: Sequence[int]) -> float:
    """The `content` drift feature (docs/metrics.md): the share of WordPiece continuation tokens (`##...`) among an
    instance's non-special tokens; 0.0 when there are none. "Special" is the tokenizer's own special-tokens mask
    (tokenizers' `Encoding.special_tokens_mask`: what the post-processor adds, [CLS] and [SEP]); an `[UNK]` that
    stands for unknown text is a word. A vocabulary/domain signal from tokens alone, so no raw text is kept."""
    words = [t for t, special in zip(tokens, special_mask, strict=True) if not special]
    if not words:
        return 0.0
    return sum(1 for t in words if t.startswith(CONTINUATION_PREFIX)) / len(words)
