"""Renders a `ValidationResult` (sentimentops.steps.validate.checks) as markdown, a self-contained HTML page and JSON.

Kept apart from the computation (evidently's split between metrics and their presentation): the core returns
typed outcomes; this module only formats them. No timestamps: the same result renders to the same bytes, so the
report folder's content hash changes only when the validation does (the manifest carries the time).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from sentimentops.steps.validate.checks import ExpectationOutcome, ValidationResult

_COLUMNS = ("split", "expectation", "result", "observed", "expected", "details")


def _verdict(result: ValidationResult) -> str:
    failed = len(result.failures)
    if result.success:
        return f"PASSED: all {len(result.outcomes)} expectations hold"
    return f"FAILED: {failed} of {len(result.outcomes)} expectations failed"


def _cells(outcome: ExpectationOutcome) -> tuple[str, ...]:
    observed = "n/a" if outcome.observed is None else str(outcome.observed)
    return (outcome.split, outcome.name, "pass" if outcome.success else "FAIL", observed, outcome.expected,
            outcome.message)


def _md_escape(text: str) -> str:
    # A pipe would end the table cell and a newline the row; review excerpts may hold both.
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_markdown(result: ValidationResult) -> str:
    lines = [f"# Dataset validation: {_verdict(result)}", ""]
    lines.append("Rows: " + ", ".join(f"{split} {rows:,}" for split, rows in result.rows.items()) + ".")
    lines.append("")
    if result.failures:
        lines += ["## Failures", ""]
        lines += [f"- **{o.split}** `{o.name}`: {_md_escape(o.message)}" for o in result.failures]
        lines.append("")
    lines += ["## Expectations", "", "| " + " | ".join(_COLUMNS) + " |", "|" + " --- |" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_md_escape(c) for c in _cells(o)) + " |" for o in result.outcomes]
    engines = ("Engines: per-split checks run as a Great Expectations suite; `overlap_share` (leakage between "
               "splits) and, where production feedback was merged, `provenance_values`, `no_feedback_in_test`, "
               "`no_leak` and the production slice's checks are computed with pandas.")
    lines += ["", engines, "", "## Thresholds", ""]
    lines += [f"- `{key}`: {json.dumps(value)}" for key, value in result.thresholds.items()]
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #1f2328; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
.badge { padding: .2rem .6rem; border-radius: .3rem; color: #fff; }
.ok { background: #1a7f37; } .bad { background: #cf222e; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr.fail td { background: #ffebe9; } td.res { font-weight: 600; }
code { font-size: .85rem; }
"""


def render_html(result: ValidationResult) -> str:
    """One page, inline CSS, no scripts or external assets: it opens from an artifact store as is."""
    esc = html.escape
    badge = "ok" if result.success else "bad"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Dataset validation</title>',
        f"<style>{_CSS}</style></head><body>",
        f'<h1>Dataset validation <span class="badge {badge}">{esc(_verdict(result))}</span></h1>',
        "<p>Rows: " + esc(", ".join(f"{s} {n:,}" for s, n in result.rows.items())) + "</p>",
    ]
    if result.failures:
        parts.append("<h2>Failures</h2><ul>")
        parts += [f"<li><b>{esc(o.split)}</b> <code>{esc(o.name)}</code>: {esc(o.message)}</li>"
                  for o in result.failures]
        parts.append("</ul>")
    for split, outcomes in result.by_split().items():
        parts.append(f"<h2>{esc(split)}</h2><table><tr>")
        parts += [f"<th>{esc(c)}</th>" for c in _COLUMNS[1:]]
        parts.append("<th>check</th></tr>")
        for o in outcomes:
            cells = _cells(o)[1:]
            row = "".join(f'<td class="res">{esc(c)}</td>' if i == 1 else f"<td>{esc(c)}</td>"
                          for i, c in enumerate(cells))
            check = f"<td><small>{esc(o.engine)}: {esc(o.expectation)}</small></td>"
            parts.append(f'<tr class="{"pass" if o.success else "fail"}">{row}{check}</tr>')
        parts.append("</table>")
    parts.append("<h2>Thresholds</h2><table>")
    parts += [f"<tr><th>{esc(k)}</th><td><code>{esc(json.dumps(v))}</code></td></tr>"
              for k, v in result.thresholds.items()]
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def render_json(result: ValidationResult) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=2) + "\n"


def write_reports(result: ValidationResult, out: Path) -> list[str]:
    """Writes report.md, report.html and report.json into `out`; returns their names."""
    out.mkdir(parents=True, exist_ok=True)
    rendered = {"report.md": render_markdown(result), "report.html": render_html(result),
                "report.json": render_json(result)}
    for name, text in rendered.items():
        tmp = out / (name + ".tmp")  # write-then-rename: a killed step never leaves half a report
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return list(rendered)
