"""Re-download (or verify) the pinned upstream schemas in this folder; standard library only.

sources.json maps each file to its upstream repository, commit, path and sha256. Usage (from the repository root,
or `make schemas`):

    python workflows/schemas/refresh.py             # download every file from its pinned URL, verify, write
    python workflows/schemas/refresh.py --from DIR  # the same from a local copy laid out like this folder
    python workflows/schemas/refresh.py --check     # no network: the committed files match the recorded sha256
    python workflows/schemas/refresh.py --record    # after editing a pin (commit/path/url): accept the new
                                                    # content and record its sha256 and size in sources.json

A file is written only once its sha256 matches (or --record is given), through a temporary file and a rename, so
a failed download never leaves a half-written schema behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE / "sources.json"
RAW = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"


def load_table(table: Path = TABLE) -> dict[str, dict]:
    """file (relative to this folder) -> {repository, commit, path, release, url, sha256, bytes}."""
    return json.loads(table.read_text())["files"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(folder: Path = HERE, table: Path = TABLE) -> list[str]:
    """Problems with the files in `folder` against the table: missing, wrong size or sha256, URL not the pin."""
    problems = []
    for name, entry in load_table(table).items():
        expected_url = RAW.format(**entry)
        if entry["url"] != expected_url:
            problems.append(f"{name}: url {entry['url']} is not the pinned {expected_url}")
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing in {folder}")
            continue
        data = path.read_bytes()
        if len(data) != entry["bytes"] or sha256(data) != entry["sha256"]:
            problems.append(f"{name}: sha256 {sha256(data)} ({len(data)} bytes), "
                            f"expected {entry['sha256']} ({entry['bytes']} bytes)")
    return problems


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # a pinned https URL from sources.json
        return resp.read()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refresh(source_dir: Path | None = None, dest: Path = HERE, table: Path = TABLE,
            record: bool = False) -> list[str]:
    """Download (or copy from source_dir) every file, verify it and write it to dest; return the problems."""
    entries = load_table(table)
    problems = []
    for name, entry in entries.items():
        where = str(source_dir / name) if source_dir else entry["url"]
        try:
            data = (source_dir / name).read_bytes() if source_dir else _fetch(entry["url"])
        except OSError as exc:  # urllib's URLError / HTTPError are OSErrors
            problems.append(f"{name}: cannot read {where}: {exc}")
            continue
        if record:
            entry.update(url=RAW.format(**entry), sha256=sha256(data), bytes=len(data))
        elif sha256(data) != entry["sha256"]:
            problems.append(f"{name}: {where} has sha256 {sha256(data)}, expected {entry['sha256']} "
                            "(not written; after changing a pin, rerun with --record)")
            continue
        _write(dest / name, data)
        print(f"{name}: {len(data)} bytes, sha256 {entry['sha256']} <- {where}")
    if record and not problems:
        table.write_text(json.dumps({"files": entries}, indent=2) + "\n")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="verify the committed files (no network)")
    mode.add_argument("--record", action="store_true",
                      help="accept the downloaded content and record its sha256/size in sources.json")
    parser.add_argument("--from", dest="source_dir", type=Path, help="copy from this folder, not the network")
    parser.add_argument("--dest", type=Path, default=HERE, help="where the files go (default: this folder)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.dest)
        if not problems:
            print(f"{len(load_table())} schema files match {TABLE.name}")
    else:
        problems = refresh(args.source_dir, args.dest, record=args.record)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
