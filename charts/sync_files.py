"""Copy the generated sources the chart packages into charts/sentimentops/files/ (what `make chart-files` runs).

Helm reads only files inside a chart, so the rendered Argo YAML (workflows/rendered/*.yaml, written by
`sentimentops render`) and the monitoring engineer's files (monitoring/rules/*.yaml, monitoring/dashboards/*.json,
monitoring/alertmanager/*) are copied byte for byte; nothing is edited here. Missing source folders are fine: the
templates include whatever exists (`.Files.Glob`). The copies are git-ignored, so they can never go stale in git;
the tests build the same tree in a temporary copy of the chart.

    python charts/sync_files.py [--chart DIR] [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "sentimentops"

# chart files/ subfolder -> (source folder relative to the repo, glob)
SOURCES: dict[str, tuple[str, str]] = {
    "workflows": ("workflows/rendered", "*.yaml"),
    "rules": ("monitoring/rules", "*.yaml"),
    "dashboards": ("monitoring/dashboards", "*.json"),
    "alertmanager": ("monitoring/alertmanager", "*"),
}


def expected(repo: Path = REPO) -> dict[str, Path]:
    """files/<sub>/<name> -> source path, for every source file that exists now."""
    out = {}
    for sub, (folder, pattern) in SOURCES.items():
        for src in sorted((repo / folder).glob(pattern)):
            if src.is_file() and not src.name.startswith("."):
                out[f"{sub}/{src.name}"] = src
    return out


def differences(chart: Path = CHART, repo: Path = REPO) -> list[str]:
    want = expected(repo)
    have = {p.relative_to(chart / "files").as_posix() for p in (chart / "files").rglob("*") if p.is_file()} \
        if (chart / "files").is_dir() else set()
    problems = [f"missing {k}" for k in sorted(set(want) - have)]
    problems += [f"stale {k}" for k in sorted(have - set(want))]
    problems += [f"differs {k}" for k in sorted(set(want) & have)
                 if not filecmp.cmp(want[k], chart / "files" / k, shallow=False)]
    return problems


def sync(chart: Path = CHART, repo: Path = REPO) -> list[str]:
    files = chart / "files"
    if files.exists():
        shutil.rmtree(files)
    for rel, src in expected(repo).items():
        dst = files / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return sorted(expected(repo))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chart", type=Path, default=CHART)
    parser.add_argument("--check", action="store_true", help="exit 1 if the chart's copies differ from the sources")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences(args.chart)
        for p in problems:
            print(p)
        return 1 if problems else 0
    for rel in sync(args.chart):
        print(f"copied {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
