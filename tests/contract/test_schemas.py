"""The upstream schemas committed in workflows/schemas: byte-identical to their pins in sources.json (the
`refresh.py --check` logic, no network), one pin per file schema_check uses, and found inside the repository."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentimentops.workflows.checks import schema_check

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "workflows" / "schemas"


@pytest.fixture(scope="module")
def refresh():
    spec = importlib.util.spec_from_file_location("schemas_refresh", SCHEMAS / "refresh.py")
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ among the package data
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def test_committed_schemas_match_their_pinned_sha256(refresh):
    assert refresh.check(SCHEMAS) == []


def test_check_reports_a_changed_file(refresh, tmp_path):
    name = "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml"
    for file in refresh.load_table():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_bytes((SCHEMAS / file).read_bytes())
    (tmp_path / name).write_bytes((SCHEMAS / name).read_bytes().replace(b"expr", b"expR", 1))
    problems = refresh.check(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{name}: sha256"), problems


def test_every_source_file_is_pinned_and_nothing_else_is_committed(refresh):
    table = refresh.load_table()
    used = {source.file for source in schema_check.SOURCES.values()}
    assert used == set(table), (used ^ set(table))
    data = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.glob("*/*")
            if p.is_file() and p.parent.name != "__pycache__"}
    assert data == set(table)


def test_pins_are_full_commits_and_the_readme_lists_each_one(refresh):
    readme = (SCHEMAS / "README.md").read_text()
    for name, entry in refresh.load_table().items():
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), name
        raw = "https://raw.githubusercontent.com"
        assert entry["url"] == f"{raw}/{entry['repository']}/{entry['commit']}/{entry['path']}", name
        row = next((line for line in readme.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"{name} missing from workflows/schemas/README.md"
        for fact in (entry["repository"], entry["commit"], entry["path"], entry["release"], str(entry["bytes"]),
                     entry["sha256"]):
            assert fact in row, (name, fact)


def test_refresh_check_cli_passes_offline():
    result = subprocess.run([sys.executable, "-B", str(SCHEMAS / "refresh.py"), "--check"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_schemas_dir_is_inside_the_repository_by_default(monkeypatch):
    monkeypatch.delenv("SENTIMENTOPS_SCHEMAS_DIR", raising=False)
    path = schema_check.schemas_dir().resolve()
    assert path == SCHEMAS.resolve()
    assert path.is_relative_to(REPO)


def test_schemas_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("SENTIMENTOPS_SCHEMAS_DIR", str(tmp_path))
    assert schema_check.schemas_dir() == tmp_path
    monkeypatch.setenv("SENTIMENTOPS_SCHEMAS_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="SENTIMENTOPS_SCHEMAS_DIR"):
        schema_check.schemas_dir()
