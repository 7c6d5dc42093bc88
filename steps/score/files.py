"""Batch scoring's files: the inputs (parquet, CSV or JSONL; a file, a folder, a gs:// prefix) and the outputs.

Every file is written whole or not at all: a local file goes to a hidden temporary name and is renamed, a gs://
object is one upload (google-cloud-storage through steps/core/production.py's client: Workload Identity in the
cluster, STORAGE_EMULATOR_HOST in tests). Every unusable input is a DataError naming the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from sentimentops.steps.core.errors import DataError
from sentimentops.steps.core.production import _gcs_client, _split_gcs, is_gcs

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format(location: str) -> str | None:
    return FORMATS.get(Path(location.rstrip("/")).suffix.lower())


def list_inputs(location: str) -> list[str]:
    """The input files: `location` itself, or the parquet/CSV/JSONL files directly in a folder or under a gs://
    prefix, sorted by name. None found is a DataError."""
    if is_gcs(location):
        bucket, prefix = _split_gcs(location)
        names = [b.name for b in _gcs_client().list_blobs(bucket, prefix=prefix)]
        if prefix in names and _format(prefix):
            files = [f"gs://{bucket}/{prefix}"]
        else:
            key = f"{prefix}/" if prefix else ""
            files = [f"gs://{bucket}/{n}" for n in sorted(names)
                     if n.startswith(key) and "/" not in n[len(key):] and _format(n)]
    else:
        path = Path(location)
        if path.is_dir():
            files = [str(p.resolve()) for p in sorted(path.iterdir()) if p.is_file() and _format(p.name)]
        elif path.is_file():
            if not _format(path.name):
                raise DataError(f"{location}: not a parquet, CSV or JSONL file ({', '.join(FORMATS)})")
            files = [str(path.resolve())]
        else:
            raise DataError(f"{location}: no such file or folder")
    if not files:
        raise DataError(f"{location}: no parquet, CSV or JSONL files ({', '.join(FORMATS)}) there")
    return files


def _read_bytes(location: str) -> bytes:
    bucket, key = _split_gcs(location)
    return _gcs_client().bucket(bucket).blob(key).download_as_bytes()


def read_table(location: str, text_column: str) -> Any:
    """One input file as a DataFrame; unreadable, empty, or without `text_column` is a DataError naming the file."""
    import pandas as pd

    kind = _format(location)
    try:
        source: Any = io.BytesIO(_read_bytes(location)) if is_gcs(location) else location
        if kind == "parquet":
            frame = pd.read_parquet(source)
        elif kind == "csv":
            frame = pd.read_csv(source)
        elif kind == "jsonl":
            frame = pd.read_json(source, lines=True)
        else:
            raise DataError(f"{location}: not a parquet, CSV or JSONL file ({', '.join(FORMATS)})")
    except DataError:
        raise
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{location}: empty file") from err
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid, a parser error and a bad JSON line are ValueErrors
        raise DataError(f"{location}: cannot read it as {kind}: {' '.join(str(err).split())}") from err
    if text_column not in frame.columns:
        raise DataError(f"{location}: no {text_column!r} column (columns: {', '.join(map(str, frame.columns))}); "
                        "name the text column with --text-column")
    if len(frame) == 0:
        raise DataError(f"{location}: empty file (no rows)")
    return frame


def write_bytes(data: bytes, location: str) -> str:
    """The whole file or nothing: a temporary local name renamed into place, or one gs:// upload."""
    if is_gcs(location):
        bucket, key = _split_gcs(location)
        _gcs_client().bucket(bucket).blob(key).upload_from_string(data)
        return location
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return str(path)


def write_parquet(frame: Any, location: str) -> str:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return write_bytes(buffer.getvalue(), location)


def read_part(location: str) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(io.BytesIO(_read_bytes(location)) if is_gcs(location) else location)
    except FileNotFoundError as err:
        raise DataError(f"{location}: part missing (did every shard succeed?)") from err
    except Exception as err:
        if type(err).__name__ == "NotFound":  # google.api_core.exceptions.NotFound
            raise DataError(f"{location}: part missing (did every shard succeed?)") from err
        raise
