"""Renders evaluate's metrics.json as one self-contained HTML page (logged as `evaluation/report.html`).

Why a page and not only numbers: a promotion is argued from evidence a reviewer has to see together (the
headline beside the champion and a TF-IDF baseline; where the model fails: slices, calibration, behavioural
tests, the worst errors and the tokens that drove them; why the served precision was chosen). MLflow's UI
renders an HTML artifact in place, so the page has inline CSS only: no scripts, no external assets, images
by file name relative to the page.

Pure: data in, string out, no timestamps (the same metrics render to the same bytes). Every section but the
challenger is optional (metrics.json grows section by section): a missing one reads "not measured", never an
error. Every text from data (reviews, names, tokens) goes through html.escape: reviews hold `<br />` and
anything else. The shape read (each section may be null or absent):

    challenger, champion: {accuracy, f1, roc_auc, rows, confusion: [[tn, fp], [fn, tp]]}; champion_version
    served_precision: "int8" | "fp32" | "torch"        max_tokens (optional: the serving limit scored at)
    baseline: {name, accuracy, f1, roc_auc, rows, train_rows, fit_seconds, params}
    behaviour: {suite, version, cases, passed, pass_rate, by_type: {MFT|INV|DIR: {cases, passed, pass_rate}}, by_capability,
                tests: [{name, type, capability, cases, passed, pass_rate,
                         failures: [{text, perturbed?, expected, got, p_positive}]}]}
    slices: [{name, rows, accuracy (null if empty), positive_rate}]   (one is named "truncated")
    calibration: {ece, mce, brier, bins: [{lower, upper, count, confidence, accuracy}]}
    int8: {decision, accuracy_fp32, accuracy_int8, agreement, discordant: [b, c], p_value, rows, reason}
    explanations: [{text, label, predicted, p_positive, tokens: [{token, weight}]}]
"""
from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sentimentops.steps.core.contract import LABELS, MAX_TOKENS
from sentimentops.steps.core.formats import NOT_MEASURED, fmt, pass_rates, pct, signed_delta

# A slice this far below the headline accuracy is marked: a 5-point gap is beyond the sampling noise of a few
# hundred rows, and it is what a user who writes that kind of review would notice.
SLICE_GAP = 0.05
FAILURES_SHOWN = 5  # failing examples listed per behavioural test; the rest are counted
TYPE_MEANING = {"MFT": "minimum functionality: simple cases with a known label",
                "INV": "invariance: a label-preserving edit must not flip the prediction",
                "DIR": "directional: an edit must move P(positive) the expected way"}
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)  # IMDB's line breaks: shown as breaks (replaced, then escaped)
_NUMBER = re.compile(r"[+\-]?[\d,.]+%?")
_LEGEND = ("<p>Token colour: green pushed the prediction toward positive, red toward negative; the stronger "
           "the colour, the larger the weight.</p>")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #1f2328; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; } h3 { font-size: 1rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.low td { background: #ffebe9; } .nm { color: #6e7781; font-style: italic; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { border: 1px solid #d0d7de; border-radius: .4rem; padding: .5rem .9rem; min-width: 8rem; }
.card b { display: block; font-size: 1.3rem; } .card span { color: #57606a; font-size: .8rem; }
figure { display: inline-block; margin: 0 1rem 1rem 0; } img { max-width: 28rem; border: 1px solid #d0d7de; }
.text { white-space: pre-wrap; font-size: .85rem; background: #f6f8fa; padding: .4rem; }
.tok { padding: 0 .1rem; border-radius: .2rem; line-height: 1.8; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def delta(value: Any, other: Any) -> str:
    return signed_delta(value, other)


def label_name(value: Any) -> str:
    """A label given as a class id (0/1) or already as a name."""
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return LABELS[value]
    return str(value)


def review_html(text: Any) -> str:
    """A review as inert text: IMDB's `<br />` become line breaks first, then everything is escaped."""
    return esc(_BR.sub("\n", str(text)))


def _not_measured(what: str = NOT_MEASURED) -> str:
    return f'<p class="nm">{esc(what)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], marked: Sequence[bool] = ()) -> str:
    """Plain-text cells (escaped here); a number is right-aligned, a marked row highlighted."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="low"' if i < len(marked) and marked[i] else ""
        cells = "".join(f'<td class="num">{esc(c)}</td>' if _NUMBER.fullmatch(c) else f"<td>{esc(c)}</td>"
                        for c in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def serving_tokens(metrics: Mapping[str, Any]) -> int:
    return int(metrics.get("max_tokens") or MAX_TOKENS)


def _headline(metrics: Mapping[str, Any]) -> str:
    challenger = metrics.get("challenger") or {}
    cards = [(fmt(challenger.get("accuracy")), f"accuracy at {serving_tokens(metrics)} tokens"),
             (fmt(challenger.get("f1")), "F1"), (fmt(challenger.get("roc_auc")), "ROC-AUC"),
             (fmt(challenger.get("rows")), "test rows"),
             (str(metrics.get("served_precision") or NOT_MEASURED), "served precision (what was scored)")]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                                           for v, k in cards) + "</div>"


def _comparison(metrics: Mapping[str, Any]) -> str:
    challenger, champion = metrics.get("challenger") or {}, metrics.get("champion") or {}
    baseline, version = metrics.get("baseline") or {}, metrics.get("champion_version")
    header = ["metric", "challenger", f"champion v{version}" if version else "champion", "Δ vs champion",
              f"baseline ({baseline.get('name', 'TF-IDF')})", "Δ vs baseline"]
    names = {"accuracy": "accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "rows": "rows"}
    rows = [[name, fmt(challenger.get(k)), fmt(champion.get(k)), "" if k == "rows" else
             delta(challenger.get(k), champion.get(k)), fmt(baseline.get(k)),
             "" if k == "rows" else delta(challenger.get(k), baseline.get(k))] for k, name in names.items()]
    notes = [] if champion else ["No champion was scored on these rows."]
    if baseline:
        params = ", ".join(f"{k}={v}" for k, v in (baseline.get("params") or {}).items())
        notes.append(f"Baseline fitted on {fmt(baseline.get('train_rows'))} training rows in "
                     f"{fmt(baseline.get('fit_seconds'), 1)} s" + (f" ({params})" if params else "") + ".")
    else:
        notes.append(f"Baseline: {NOT_MEASURED}.")
    return _table(header, rows) + "".join(f"<p>{esc(n)}</p>" for n in notes)


def _production(metrics: Mapping[str, Any]) -> str:
    """The challenger and the champion on the production slice (ingest's held-out recent feedback)."""
    found = metrics.get("production")
    if not found:
        return _not_measured("No production slice: the dataset holds no production.parquet (no feedback merged, "
                             "or too little for a slice).")
    challenger, champion = found.get("challenger") or {}, found.get("champion") or {}
    version = metrics.get("champion_version")
    header = ["metric", "challenger", f"champion v{version}" if version else "champion", "Δ vs champion"]
    names = {"accuracy": "accuracy", "f1": "F1", "rows": "rows"}
    rows = [[name, fmt(challenger.get(k)), fmt(champion.get(k)),
             "" if k == "rows" else delta(challenger.get(k), champion.get(k))] for k, name in names.items()]
    note = ("The most recent labelled feedback, held out by ingest: never trained on, never in the base test split."
            + ("" if champion else " No champion was scored on these rows."))
    return _table(header, rows) + f"<p>{esc(note)}</p>"


def _figures(metrics: Mapping[str, Any], images: Mapping[str, str]) -> str:
    parts = []
    captions = {"confusion": "Confusion matrix (challenger)", "reliability": "Reliability diagram"}
    for key, caption in captions.items():
        if images.get(key):
            parts.append(f'<figure><img src="{esc(images[key])}" alt="{esc(caption)}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        else:
            parts.append(f"<figure>{_not_measured(f'{caption}: {NOT_MEASURED}')}</figure>")
    if confusion := (metrics.get("challenger") or {}).get("confusion"):  # the numbers travel with the page
        (tn, fp), (fn, tp) = confusion
        negative, positive = LABELS
        parts.append(_table(["", f"predicted {negative}", f"predicted {positive}"],
                            [[f"actual {negative}", fmt(tn), fmt(fp)],
                             [f"actual {positive}", fmt(fn), fmt(tp)]]))
    return "".join(parts)


def _slices(metrics: Mapping[str, Any]) -> str:
    slices = metrics.get("slices")
    if not slices:
        return _not_measured()
    overall = (metrics.get("challenger") or {}).get("accuracy")
    rows, marked = [], []
    for s in slices:
        accuracy = s.get("accuracy")
        rows.append([str(s.get("name", "")), fmt(s.get("rows")), fmt(accuracy) if s.get("rows") else "empty",
                     pct(s.get("positive_rate")), delta(accuracy, overall)])
        numbers = isinstance(accuracy, int | float) and isinstance(overall, int | float)
        marked.append(numbers and overall - accuracy >= SLICE_GAP)
    note = f"<p>Slices {SLICE_GAP:.0%} or more below the headline accuracy are marked.</p>"
    return _table(["slice", "rows", "accuracy", "positive rate", "Δ vs all"], rows, marked) + note


def _calibration(metrics: Mapping[str, Any]) -> str:
    calibration = metrics.get("calibration")
    if not calibration:
        return _not_measured()
    parts = [_table(["ECE", "MCE", "Brier"], [[fmt(calibration.get(k), 4) for k in ("ece", "mce", "brier")]])]
    rows = [[f"{fmt(b.get('lower'), 2)}–{fmt(b.get('upper'), 2)}", fmt(b.get("count")),
             fmt(b.get("confidence")), fmt(b.get("accuracy")), delta(b.get("accuracy"), b.get("confidence"))]
            for b in calibration.get("bins") or []]
    if rows:
        header = ["confidence bin", "rows", "mean confidence", "accuracy", "accuracy − confidence"]
        parts.append(_table(header, rows))
    return "".join(parts)


def _failure(failure: Mapping[str, Any]) -> str:
    perturbed = (f'<div>perturbed:</div><div class="text">{review_html(failure["perturbed"])}</div>'
                 if failure.get("perturbed") is not None else "")
    return (f'<li><div class="text">{review_html(failure.get("text", ""))}</div>{perturbed}'
            f"expected <b>{esc(label_name(failure.get('expected', '')))}</b>, got "
            f"<b class='bad'>{esc(label_name(failure.get('got', '')))}</b> "
            f"(P(positive) {esc(fmt(failure.get('p_positive')))})</li>")


def _behaviour(metrics: Mapping[str, Any]) -> str:
    behaviour = metrics.get("behaviour")
    if not behaviour:
        return _not_measured()
    summary = (f"Suite {behaviour.get('suite', '')} v{behaviour.get('version', '')}: "
               f"{fmt(behaviour.get('passed'))} of {fmt(behaviour.get('cases'))} cases pass "
               f"({pct(behaviour.get('pass_rate'))}).")
    by_type, by_capability = pass_rates(behaviour.get("by_type")), pass_rates(behaviour.get("by_capability"))
    parts = [f"<p>{esc(summary)}</p>",
             _table(["type", "pass rate", "what it checks"],
                    [[t, pct(r), TYPE_MEANING.get(t, "")] for t, r in by_type.items()]),
             _table(["capability", "pass rate"], [[c, pct(r)] for c, r in by_capability.items()],
                    [r is not None and r < 1 for r in by_capability.values()]),
             "<p>Capabilities with failing cases are marked.</p>"]
    for test in behaviour.get("tests") or []:
        failures = test.get("failures") or []
        status = "ok" if not failures and test.get("passed") == test.get("cases") else "bad"
        parts.append(f"<h3>{esc(test.get('name', ''))} <small>({esc(test.get('type', ''))}, "
                     f"{esc(test.get('capability', ''))})</small></h3><p class=\"{status}\">"
                     f"{esc(fmt(test.get('passed')))} of {esc(fmt(test.get('cases')))} pass "
                     f"({esc(pct(test.get('pass_rate')))})</p>")
        if failures:
            more = len(failures) - FAILURES_SHOWN
            parts.append("<ul>" + "".join(_failure(f) for f in failures[:FAILURES_SHOWN]) + "</ul>"
                         + (f"<p>and {more} more failing cases.</p>" if more > 0 else ""))
    return "".join(parts)


def _int8(metrics: Mapping[str, Any]) -> str:
    int8 = metrics.get("int8")
    if not int8:
        return _not_measured()
    b, c = (list(int8.get("discordant") or []) + [None, None])[:2]
    rows = [["decision", str(int8.get("decision", ""))], ["accuracy fp32", fmt(int8.get("accuracy_fp32"))],
            ["accuracy int8", fmt(int8.get("accuracy_int8"))], ["agreement", pct(int8.get("agreement"))],
            ["discordant pairs b / c (McNemar)", f"{fmt(b)} / {fmt(c)}"],
            ["p-value (McNemar)", fmt(int8.get("p_value"), 4)], ["rows", fmt(int8.get("rows"))],
            ["reason", str(int8.get("reason", ""))]]
    return _table(["", "value"], rows)


def token_style(weight: float, scale: float) -> str:
    """Background by the weight's sign (green: toward positive, red: toward negative) and magnitude (opacity
    relative to the example's largest weight, so every example uses the whole range)."""
    alpha = 0.0 if scale <= 0 else min(1.0, abs(weight) / scale) * 0.8
    rgb = "26,127,55" if weight > 0 else "207,34,46"
    return f"background: rgba({rgb},{alpha:.2f})"


def _explanations(metrics: Mapping[str, Any]) -> str:
    examples = metrics.get("explanations")
    if not examples:
        return _not_measured()
    parts = [_LEGEND]
    for example in examples:
        tokens = example.get("tokens") or []
        weighted = [(str(t.get("token", "")), float(t.get("weight") or 0.0)) for t in tokens]
        scale = max((abs(w) for _, w in weighted), default=0.0)
        spans = " ".join(f'<span class="tok" style="{token_style(w, scale)}" title="{w:+.4f}">'
                         f"{esc(tok)}</span>" for tok, w in weighted)
        heading = (f"actual {label_name(example.get('label'))}, predicted "
                   f"{label_name(example.get('predicted'))} (P(positive) {fmt(example.get('p_positive'))})")
        parts.append(f"<h3>{esc(heading)}</h3><p>{spans or esc('no token weights')}</p>"
                     f'<div class="text">{review_html(example.get("text", ""))}</div>')
    return "".join(parts)


def render_report(metrics: Mapping[str, Any], *, title: str, images: Mapping[str, str]) -> str:
    """The evaluation page for metrics.json (shape above); `images` maps "confusion" / "reliability" to file
    names relative to the page (a missing key reads "not measured")."""
    tokens = serving_tokens(metrics)
    sections = [
        ("Headline", _headline(metrics)),
        ("Challenger, champion and baseline", _comparison(metrics)),
        ("Production slice (recent feedback)", _production(metrics)),
        ("Confusion matrix and reliability", _figures(metrics, images)),
        (f"Slices by review length (serving limit {tokens} tokens)", _slices(metrics)),
        ("Calibration", _calibration(metrics)),
        ("Behavioural tests", _behaviour(metrics)),
        ("Served precision: the int8 decision", _int8(metrics)),
        ("Worst errors and their most influential tokens", _explanations(metrics)),
    ]
    intro = f"Scored on the held-out test split as the predictor serves it: truncated at {tokens} tokens."
    parts = ["<!DOCTYPE html>", f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>',
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>"]
    parts += [f"<h2>{esc(name)}</h2>{body}" for name, body in sections]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
