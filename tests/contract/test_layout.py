"""The layout is the architecture (ARCHITECTURE.md "Layout", docs/layout.md): imports point toward the core only.

Read from the source with `ast` (every import, module-level or inside a function: a function-local import that closes
a circle is still a circle), so nothing is imported to check it:
- layers: `steps.core` imports nothing else of the project; a stage imports the core and its own package, never
  another stage; the entry points (`steps.cli`, `steps.quickstart`) import the core; `workflows` imports the core
  and itself, never a stage (it knows stages by their command line); inside `workflows`, `argo` is the bottom,
  `definitions`, `runner` and `checks` sit on it, `render` and `cli` on top;
- no cycle between modules;
- pyproject.toml lists every package folder, and no module is imported under the old top-level names.
"""
from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"sentimentops.steps": REPO / "steps", "sentimentops.workflows": REPO / "workflows"}
SKIP_DIRS = {"schemas", "rendered", "profiles", "demo", "__pycache__"}

STAGES = ("ingest", "validate", "version", "train", "evaluate", "register", "serve", "rollout", "drift", "notify", "lineage",
          "feedback", "score")
S, W = "sentimentops.steps", "sentimentops.workflows"
# (module prefix, the prefixes it may import). The longest matching prefix decides.
RULES: dict[str, tuple[str, ...]] = {
    f"{S}.core": (f"{S}.core",),
    **{f"{S}.{stage}": (f"{S}.core", f"{S}.{stage}") for stage in STAGES},
    f"{S}.cli": (f"{S}.core", f"{W}.cli"),  # stages are imported by name (importlib), never statically
    f"{S}.quickstart": (f"{S}.core",),
    f"{W}.argo": (f"{S}.core", f"{W}.argo"),
    f"{W}.definitions": (f"{S}.core", f"{W}.definitions"),
    f"{W}.runner": (f"{S}.core", f"{W}.argo", f"{W}.runner"),
    f"{W}.checks": (f"{S}.core", f"{W}.argo", f"{W}.checks"),
    f"{W}.render": (f"{S}.core", f"{W}.definitions", f"{W}.checks"),
    f"{W}.cli": (f"{S}.core", f"{W}.argo", f"{W}.definitions", f"{W}.runner", f"{W}.checks", f"{W}.render"),
    f"{W}.__main__": (f"{W}.cli",),
    f"{S}": (f"{S}",),  # the two packages' own __init__ files, and nothing below them (ROOT_ONLY)
    f"{W}": (f"{W}",),
}
ROOT_ONLY = {S, W}  # a rule that matches only the package itself: a new module must be given a layer above


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if SKIP_DIRS & set(rel.parts[:-1]):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def _imports(module: str) -> set[str]:
    """Project modules `module` imports (`from pkg import mod` counts as importing pkg.mod when mod is a module)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith(("sentimentops.", "steps", "workflows"))}
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _rule(module: str) -> tuple[str, tuple[str, ...]]:
    key = max((p for p in RULES if _matches(module, p)), key=len)
    return key, RULES[key]


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or (prefix not in ROOT_ONLY and module.startswith(prefix + "."))


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if not any(_matches(m, p) for p in RULES)]
    assert not missing, f"modules with no layer in RULES (add one): {missing}"


def test_imports_point_toward_the_core_only():
    wrong = []
    for module, targets in sorted(GRAPH.items()):
        layer, allowed = _rule(module)
        for target in sorted(targets):
            if not any(target == p or target.startswith(p + ".") for p in allowed):
                wrong.append(f"{module} ({layer}) imports {target}")
    assert not wrong, "imports against the layers (ARCHITECTURE.md 'Layout'):\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t in targets if t in MODULES and t != m} for m, targets in GRAPH.items()}
    # Importing a package runs its __init__: an edge to pkg.mod is also an edge to pkg.
    cycles, state, stack = [], defaultdict(int), []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif state[nxt] == 0:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if state[module] == 0:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_import_under_the_old_top_level_names():
    old = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
           if t.split(".")[0] in {"steps", "workflows"}]
    for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            old += [f"{path.relative_to(REPO)} imports {n}" for n in names if n.split(".")[0] in {"steps", "workflows"}]
    assert not old, "\n".join(old)


def test_pyproject_lists_every_package_folder():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {prefix: root.name for prefix, root in ROOTS.items()}
    folders = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert set(config["packages"]) == folders


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith((f"{S}.", f"{W}."))))
def test_modules_stay_small_or_say_why(module):
    """ARCHITECTURE.md style 1: 60-350 lines, one concept; a longer module says why in its docstring."""
    text = MODULES[module].read_text()
    lines = text.count("\n")
    if lines > 350:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "Longer than" in doc or "longer than" in doc, (
            f"{module}: {lines} lines; split it by concern or say why at its top ('Longer than 350 lines: ...')")


def _readme_layout_paths() -> list[str]:
    text = (REPO / "README.md").read_text()
    table = text[text.index("| path | what |"):].split("\n\n", 1)[0]
    cells = [row.split("|")[1] for row in table.splitlines()[2:]]
    return [p for cell in cells for p in re.findall(r"`([^`]+)`", cell)]


def test_readme_layout_table_matches_the_tree():
    """Every path the README's layout table names exists, and every package under steps/ and workflows/ is named
    (itself or through its module file)."""
    named = _readme_layout_paths()
    missing = [p for p in named if not (REPO / p.rstrip("/")).exists()]
    assert not missing, f"README layout table names paths that do not exist: {missing}"
    packages = sorted({str(p.parent.relative_to(REPO)) + "/" for m, p in MODULES.items()
                       if p.name == "__init__.py" and p.parent not in ROOTS.values()})
    stages_and_files = set(named)
    unnamed = [p for p in packages if p not in stages_and_files]
    assert not unnamed, f"packages missing from the README layout table: {unnamed}"
    top_modules = sorted(f"{p.relative_to(REPO)}" for m, p in MODULES.items()
                         if p.parent in ROOTS.values() and p.name not in {"__init__.py", "__main__.py"})
    assert not [m for m in top_modules if m not in stages_and_files], "modules missing from the README layout table"
