"""terraform/*.tf parsed with python-hcl2, for the contract tests that read it (terraform, deploy RBAC)."""

from __future__ import annotations

from pathlib import Path

import pytest

TF = Path(__file__).resolve().parents[2] / "terraform"
INFRA_HINT = "install the infra extra: .venv/bin/pip install -e '.[infra]'"


def clean(node):
    """python-hcl2 keeps HCL quotes (`"\\"gpu-pool\\""`) and `__is_block__` markers: strip both."""
    if isinstance(node, dict):
        return {clean(k): clean(v) for k, v in node.items() if k != "__is_block__"}
    if isinstance(node, list):
        return [clean(v) for v in node]
    if isinstance(node, str) and len(node) >= 2 and node[0] == node[-1] == '"':
        return node[1:-1]
    return node


def load(tf_dir: Path = TF) -> dict[str, list]:
    """All .tf files merged: {'resource': [...], 'variable': [...], ...} (skips where python-hcl2 is missing)."""
    hcl2 = pytest.importorskip("hcl2", reason=f"python-hcl2 is not installed ({INFRA_HINT})")
    merged: dict[str, list] = {}
    for path in sorted(tf_dir.glob("*.tf")):
        with open(path) as fh:
            for key, blocks in clean(hcl2.load(fh)).items():
                merged.setdefault(key, []).extend(blocks)
    return merged
