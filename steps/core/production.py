"""Production data: the requests the predictor captured and the labels people gave them (feedback), where they are
kept and what their columns are. One definition for the predictor (which writes both), `sentimentops feedback
import` (which writes feedback), ingest (which merges feedback into the training data) and the loop benchmark.

A store is a local folder or a `gs://bucket/prefix` URL holding two kinds of part files, each a parquet table
written once and never changed:

    <store>/captures/part-<UTC time>-<random>.parquet   CAPTURE_COLUMNS (sampled requests with their predictions)
    <store>/feedback/part-<UTC time>-<random>.parquet   FEEDBACK_COLUMNS (one true label per row)

Readers take the union of a kind's parts (`read_parts`). A part is written whole or not at all: locally through a
temporary name and a rename, on GCS by one object upload. Feedback for one request id may appear in several parts
(a retried import, the same label posted twice): readers keep the first row per id (`latest_feedback`).

Privacy: raw review text is written only when capture is on (docs/production-data.md); feedback rows carry the text
they label, because a label without its text cannot train anything. The one exception is a label deferred by a
replica that had not captured its id (DEFERRED_ORIGIN): it carries no text, and ingest takes the text from the
capture with that id while captures are kept.

Only the standard library, pandas/pyarrow and (for gs://) google-cloud-storage: the serve image imports this module.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from sentimentops.steps.core.contract import LABELS

CAPTURES = "captures"
FEEDBACK = "feedback"
KINDS = (CAPTURES, FEEDBACK)

# What the predictor captures per sampled instance; `id` is the request id (REQUEST_ID_HEADER) plus the instance's
# index when a request holds several (`<request id>` alone for one instance, `<request id>/<i>` otherwise).
CAPTURE_COLUMNS = ("id", "ts", "text", "probability", "label", "model_name", "model_version")
# One true label per row: `label` is the class id (LABELS' index); `predicted` the class id the model gave (-1:
# unknown, e.g. an imported label for a request that was never captured); `origin` says where the label came from
# (`api:id`, `api:text`, `import:<file name>`).
FEEDBACK_COLUMNS = ("id", "ts", "text", "label", "predicted", "model_version", "origin")
UNKNOWN_PREDICTION = -1
# A label given by id to a replica that did not capture that id (another replica did, or its in-memory index has
# moved on): stored with this origin, no text, no prediction, and joined to its capture by id at ingest
# (`resolve_deferred`); the predictor answers 202 "deferred" (ServeSettings.feedback_unknown_ids = defer).
DEFERRED_ORIGIN = "api:id-deferred"

# The request id: taken from this header when the client sends one (KServe and most gateways pass it through),
# else made by the predictor; returned as this header and in every body.
REQUEST_ID_HEADER = "X-Request-Id"
# On a copy of a request that a router mirrors to the other deployment of a canary (steps/rollout/router.py): the
# predictor answers it like any request but does not capture it (the client's request was captured where it was
# answered; a copy would store the same text twice).
MIRROR_HEADER = "X-SentimentOps-Mirror"
# A client's request id is kept only when it is this sane (it becomes a header, a file row and a metric-free log
# field): at most 128 characters of letters, digits and `._:/-`; anything else is replaced by a fresh one.
# No "/": a client's id can never equal the capture id of another request's instance (`<id>/<i>`).
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# ingest's provenance column on every row of the merged dataset, and the split of held-out recent feedback.
PROVENANCE_COLUMN = "provenance"
BASE_PROVENANCE = "base"
FEEDBACK_PROVENANCE = "feedback"
PRODUCTION_SPLIT = "production"
# The smallest production slice worth a verdict: ingest carves none below it (all feedback then trains) and the
# promotion policy only reports, never judges, a smaller one. At 50 rows one answer moves accuracy 2 points.
PRODUCTION_MIN_ROWS = 50


def normalised(texts: Any) -> Any:
    """Whitespace-normalised text (runs of whitespace -> one space, stripped), None for non-strings: the one rule by
    which ingest deduplicates feedback and validate finds duplicates and leaks (a pandas Series in, one out)."""
    return texts.map(lambda v: " ".join(v.split()) if isinstance(v, str) else None)


def parse_label(value: Any) -> int:
    """A label as people and labelling tools write it -> the class id: 0/1 (ints, or the strings "0"/"1"),
    "negative"/"positive", "neg"/"pos" (any case). Anything else is a ValueError naming the accepted forms."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value in (0, 1):  # True is no label
        return int(value)
    if isinstance(value, str):
        word = value.strip().lower()
        for class_id, name in enumerate(LABELS):
            if word in (name, name[:3], str(class_id)):
                return class_id
    raise ValueError(f"label {value!r}: expected one of {', '.join(LABELS)} or 0/1")


def sane_request_id(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and REQUEST_ID_PATTERN.fullmatch(value) is not None


def instance_id(request_id: str, index: int, count: int) -> str:
    """The capture id of one instance: the request id alone for a one-instance request, else `<id>/<index>`."""
    return request_id if count == 1 else f"{request_id}/{index}"


_INSTANCE_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")


def valid_capture_id(value: str) -> bool:
    """Whether `value` has the form of a capture id (instance_id): a sane request id, alone or `<id>/<index>`."""
    request_id, slash, index = value.partition("/")
    return sane_request_id(request_id) and (not slash or _INSTANCE_INDEX.fullmatch(index) is not None)


def text_feedback_id(text: str) -> str:
    """The id of a label given for a text rather than for a captured request (`POST /v1/feedback {"text"}`, an
    imported row without an id): a hash of the exact text, so the same review labelled twice, through the API or
    an import, is one id (idempotent) and dedups against itself in ingest."""
    return "text:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def part_name(now: float | None = None) -> str:
    """A part file's name: sortable by time, unique without coordination (two replicas, one store)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now if now is not None else time.time()))
    return f"part-{stamp}-{secrets.token_hex(6)}.parquet"


def is_gcs(location: str | os.PathLike[str]) -> bool:
    return str(location).startswith("gs://")


def _split_gcs(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("gs://").partition("/")
    if not bucket:
        raise ValueError(f"{url}: expected gs://BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class Store:
    """A production-data store: a local folder or gs://bucket/prefix (module docstring)."""

    location: str

    def __post_init__(self) -> None:
        if not self.location.strip():
            raise ValueError("the production store is empty: a folder or gs://BUCKET[/PREFIX]")
        if is_gcs(self.location):
            _split_gcs(self.location)  # gs:// without a bucket: refused here, not at the first write

    def __str__(self) -> str:
        return self.location

    def kind_location(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
        return f"{self.location.rstrip('/')}/{kind}"

    def write_part(self, kind: str, frame: Any, now: float | None = None) -> str:
        """Writes `frame` (a pandas DataFrame) as one new part of `kind`; returns its path or gs:// URL."""
        name = part_name(now)
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        data = buffer.getvalue()
        if is_gcs(self.location):
            bucket, prefix = _split_gcs(self.location)
            key = "/".join(p for p in (prefix, kind, name) if p)
            _gcs_bucket(bucket).blob(key).upload_from_string(data, content_type="application/vnd.apache.parquet")
            return f"gs://{bucket}/{key}"
        folder = Path(self.kind_location(kind))
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        tmp = folder / f".{name}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # a crash after the rename must not leave an empty part readers choke on
            os.replace(tmp, target)  # readers see the whole part or none of it
        finally:
            tmp.unlink(missing_ok=True)
        return str(target)

    def parts(self, kind: str) -> list[str]:
        """The kind's part files (paths or gs:// URLs), oldest first; none when the store does not exist yet."""
        if is_gcs(self.location):
            bucket, prefix = _split_gcs(self.location)
            key = "/".join(p for p in (prefix, kind) if p) + "/"
            names = [b.name for b in _gcs_client().list_blobs(bucket, prefix=key)]
            return [f"gs://{bucket}/{n}" for n in sorted(names)
                    if n.endswith(".parquet") and "/" not in n[len(key):]]
        folder = Path(self.kind_location(kind))
        if not folder.is_dir():
            return []
        return [str(p) for p in sorted(folder.glob("part-*.parquet"))]

    def read_parts(self, kind: str) -> Any:
        """The union of the kind's parts as one DataFrame with the kind's columns (empty when there are none)."""
        import pandas as pd

        columns = list(CAPTURE_COLUMNS if kind == CAPTURES else FEEDBACK_COLUMNS)
        frames = [read_parquet(part) for part in self.parts(kind)]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, "object")) for c in columns})
        frame = pd.concat(frames, ignore_index=True)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.kind_location(kind)}: parts lack column(s) {missing}")
        return frame[columns]


_DTYPES = {"ts": "float64", "probability": "float64", "label": "int64", "predicted": "int64"}


def read_parquet(location: str | os.PathLike[str]) -> Any:
    """One parquet file, local or gs://."""
    import pandas as pd

    if is_gcs(location):
        bucket, key = _split_gcs(str(location))
        return pd.read_parquet(io.BytesIO(_gcs_bucket(bucket).blob(key).download_as_bytes()))
    return pd.read_parquet(location)


def latest_feedback(frame: Any) -> Any:
    """One row per id: the first label given for it (later duplicates dropped, as the API answers them)."""
    ordered = frame.sort_values("ts", kind="stable")
    return ordered.drop_duplicates("id", keep="first").reset_index(drop=True)


@dataclass
class Resolved:
    """What resolve_deferred made of the deferred labels (DEFERRED_ORIGIN)."""

    feedback: Any   # every non-deferred row, and each deferred one with its capture's text, prediction and version
    unmatched: int  # deferred labels no capture has the id of (never sampled, mistyped, or the capture expired)
    ambiguous: int  # deferred labels whose id names captures of different texts (a client reusing an id across
    #                 replicas or restarts, V2's default "1"): which text was meant cannot be known


def resolve_deferred(feedback: Any, captures: Any) -> Resolved:
    """Gives each deferred label the text, predicted class and model version of the capture with its id; leaves out
    those no capture, or captures of more than one text, match. Other rows pass unchanged, in their order."""
    deferred = feedback["origin"] == DEFERRED_ORIGIN
    if not deferred.any():
        return Resolved(feedback, 0, 0)
    captures = captures[normalised(captures["text"]).notna()]  # a capture without text cannot lend one
    texts = normalised(captures["text"]).groupby(captures["id"]).nunique()
    one = captures[captures["id"].isin(texts.index[texts == 1])].drop_duplicates("id", keep="last").set_index("id")
    known = deferred & feedback["id"].isin(one.index)
    ambiguous = deferred & feedback["id"].isin(texts.index[texts > 1])
    frame = feedback[~deferred | known].copy()
    matched = frame["origin"].eq(DEFERRED_ORIGIN).to_numpy()
    ids = frame.loc[matched, "id"]
    frame["text"] = frame["text"].astype(object)
    frame["model_version"] = frame["model_version"].astype(object)
    frame.loc[matched, "text"] = one.loc[ids, "text"].to_numpy()
    frame.loc[matched, "predicted"] = one.loc[ids, "label"].astype("int64").to_numpy()
    frame.loc[matched, "model_version"] = one.loc[ids, "model_version"].astype(str).to_numpy()
    frame = frame.reset_index(drop=True).astype({c: t for c, t in _DTYPES.items() if c in frame.columns})
    n_ambiguous = int(ambiguous.sum())
    return Resolved(frame, int(deferred.sum()) - int(known.sum()) - n_ambiguous, n_ambiguous)


def feedback_frame(rows: Sequence[dict[str, Any]] | Iterable[dict[str, Any]]) -> Any:
    """Feedback rows (dicts with FEEDBACK_COLUMNS) as a DataFrame in the column order and types readers expect."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(FEEDBACK_COLUMNS))
    return frame.astype({c: t for c, t in _DTYPES.items() if c in frame.columns})


def capture_frame(rows: Sequence[dict[str, Any]] | Iterable[dict[str, Any]]) -> Any:
    """Captured rows (dicts with CAPTURE_COLUMNS; `label` the class id) as a DataFrame, as feedback_frame does."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(CAPTURE_COLUMNS))
    return frame.astype({c: t for c, t in _DTYPES.items() if c in frame.columns})


def _gcs_client():
    """google-cloud-storage's client: Workload Identity in the cluster, STORAGE_EMULATOR_HOST in tests."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                              credentials=AnonymousCredentials())
    return storage.Client()


def _gcs_bucket(name: str):
    return _gcs_client().bucket(name)
