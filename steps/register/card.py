"""The model card of a registered version (Hugging Face style: YAML front matter + Markdown) and its
one-line registry description, rendered from what the stages already recorded.

Why generated: a hand-written card goes stale at the next training run; this one is rebuilt from the
manifests and evaluate's metrics.json whenever a version is registered, so what it claims (accuracy at the
serving length, the baseline it beats, the slices and behaviours it fails) is that very version's evidence.
Its limitations are derived from that evidence (a weak slice, the truncated share, a failing behavioural
capability, poor calibration) plus the standing ones of the set-up; what was not measured says so.

Pure: `CardInputs` in, text out. `CardInputs.from_stage_outputs` fills it from the typed manifests (register
reads them all already); the caller writes and logs the text.

Longer than 350 lines: one document's inputs, the rules that turn evidence into its limitations, and its
sections; split, a reader would follow one claim of the card (say, a weak slice) across three modules.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import yaml

from sentimentops.steps.core.contract import LABELS, MAX_TOKENS, head_tokens
from sentimentops.steps.core.formats import NOT_MEASURED, fmt, pass_rates, pct, signed_delta
from sentimentops.steps.core.manifests import EvaluateManifest, IngestManifest, TrainManifest, VersionManifest

NOT_RECORDED = "not recorded"  # a fact (a hash, a device) the stages did not hand over, not a measurement
SLICE_GAP = 0.05        # a slice this far below the headline accuracy is a limitation (beyond sampling noise)
MIN_SLICE_ROWS = 20     # ... when it holds enough rows for its accuracy to mean something
CAPABILITY_BAR = 0.9    # a capability passing fewer of its cases fails: a systematic weakness, not a slip
ECE_BAR = 0.05          # calibration error above which P(positive) should not be read as a probability
BASELINE_MARGIN = 0.01  # less than a point above TF-IDF does not justify a transformer's cost
STANDING = (
    "English only: reviews in other languages are out of scope and are scored without warning.",
    "Binary: every input gets `negative` or `positive`; mixed or neutral reviews have no label of their own.",
    (f"At most {MAX_TOKENS} tokens are read: a longer review is cut (head and tail kept, the middle "
     "dropped), so a verdict stated only in the middle is not seen."),
    "Sarcasm and irony are not modelled explicitly: a known failure of models of this kind.",
)
INTENDED_USE = (f"Binary sentiment ({' / '.join(LABELS)}) of English movie and product reviews, one review "
                "per instance, served by the KServe predictor.")
OUT_OF_SCOPE = ("Out of scope: other languages; sarcasm or irony detection; neutral or aspect-level "
                "sentiment; any decision about people (hiring, moderation of individuals, credit, ...).")
HEADLINE = ("accuracy", "f1", "roc_auc")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class DatasetFacts(TypedDict, total=False):
    """What the card says about the data (every key optional; a missing one reads "not recorded")."""

    source: str           # what ingest read: IngestManifest.refs.source ("hf:stanfordnlp/imdb", a path)
    dvc_md5: str          # VersionManifest.refs.dvc_md5
    remote: str | None    # VersionManifest.refs.dvc_remote (or params.remote)
    rows: dict[str, int]  # split -> rows: IngestManifest.metrics `<split>_rows`
    provenance: str       # how the rows were drawn (from_stage_outputs writes it from the ingest manifest)
    content_hash: str     # TrainManifest.inputs["dataset"]: sha256 of the dataset folder trained on


@dataclass(frozen=True)
class CardInputs:
    """Plain values from the manifests and metrics.json (the comments say where each comes from)."""

    registered_model: str               # settings.registered_model
    version: str                        # the registry version (Registered.version)
    run_id: str                         # TrainManifest.refs.mlflow_run_id
    git_sha: str                        # TrainManifest.git_sha
    base_model: str                     # TrainManifest.params.base_model_used (what was fine-tuned)
    train_params: Mapping[str, Any]     # TrainManifest.params (epochs, batch_size, learning_rate, ...)
    train_metrics: Mapping[str, Any]    # TrainManifest.metrics (train_seconds, samples_per_s, ...)
    dataset: DatasetFacts
    evaluation: Mapping[str, Any]       # evaluate's metrics.json (shape: steps/evaluate/report.py)
    workflow: str                       # settings.workflow_name
    created: str                        # when the version was registered (ISO 8601)
    serving_tokens: int = MAX_TOKENS    # EvaluateManifest.params.max_tokens: the length scored at
    device: str | None = None           # the train run's `device` tag in MLflow (not in the manifest)
    run_reason: str | None = None       # settings.run_reason
    served_name: str = "sentiment"      # the model name in the predictor's paths (serve --model-name)
    license: str = "apache-2.0"
    images: Mapping[str, str] = field(default_factory=dict)  # stage -> image (ref@digest): each manifest's `image`

    @classmethod
    def from_stage_outputs(cls, *, train: TrainManifest, evaluation: EvaluateManifest,
                           dataset_version: VersionManifest, metrics: Mapping[str, Any],
                           registered_model: str, version: str, workflow: str, created: str,
                           ingest: IngestManifest | None = None, device: str | None = None,
                           run_reason: str | None = None, images: Mapping[str, str] | None = None) -> CardInputs:
        """From the manifests register reads (`Inputs`), evaluate's metrics.json (`metrics`) and, when the
        caller reads it too, the dataset folder's IngestManifest (source, rows per split, sampling)."""
        params = train.params.model_dump(mode="json", exclude_none=True)
        evaluated = dict(metrics)
        if not evaluated.get("challenger"):  # an older metrics.json: the manifest's headline at least
            evaluated["challenger"] = {k: evaluation.metrics[f"test_{k}"] for k in HEADLINE}
        evaluated.setdefault("champion_version", evaluation.refs.champion_version)
        rows = {s: int(params[f"{s}_rows"]) for s in ("train", "validation") if f"{s}_rows" in params}
        if (test_rows := evaluated["challenger"].get("rows")) is not None:
            rows["test"] = int(test_rows)
        facts = DatasetFacts(dvc_md5=dataset_version.refs.dvc_md5 or train.refs.dvc_md5,
                             remote=dataset_version.refs.dvc_remote or dataset_version.params.remote)
        if content_hash := train.inputs.get("dataset"):
            facts["content_hash"] = content_hash
        if ingest is not None:
            counted = ingest.metrics
            rows |= {s: int(counted[f"{s}_rows"]) for s in ("train", "validation", "test")
                     if f"{s}_rows" in counted}
            p, used = ingest.params, ingest.refs.source
            fallback = f" (offline fallback for {p.source})" if ingest.refs.offline_fallback else ""
            facts["source"] = used
            facts["provenance"] = (
                f"Read from {used}{fallback}; seeded sample (seed {p.seed}): {p.sample_size or 'all'} train "
                f"rows, {p.val_fraction:.0%} of them held out for validation, {p.test_size or 'all'} test "
                "rows; validation is carved from train, so nothing is selected on test.")
        facts["rows"] = rows
        base = str(params.get("base_model_used") or params.get("base_model", ""))
        return cls(registered_model=registered_model, version=str(version), run_id=train.refs.mlflow_run_id,
                   git_sha=train.git_sha, base_model=base, train_params=params,
                   train_metrics=train.metrics.model_dump(mode="json", exclude_none=True), dataset=facts,
                   evaluation=evaluated, workflow=workflow, created=created,
                   serving_tokens=evaluation.params.max_tokens or MAX_TOKENS, device=device,
                   run_reason=run_reason, images=dict(images or {}))


def delta(value: Any, other: Any) -> str:
    found = signed_delta(value, other)
    return f" ({found})" if found else ""


def md(text: Any) -> str:
    """Text from data in Markdown: a pipe would end a table cell, a newline the row, `<` open HTML."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def dataset_name(card: CardInputs) -> str:
    """A display name for the source: IMDB for hf:stanfordnlp/imdb or a folder named imdb."""
    source = (card.dataset.get("source") or "").removeprefix("hf:").rstrip("/")
    last = source.rsplit("/", 1)[-1]
    return "IMDB" if last.lower() == "imdb" else last or "unknown"


def hub_dataset(card: CardInputs) -> str | None:
    return source[3:] if (source := card.dataset.get("source") or "").startswith("hf:") else None


def hub_base_model(card: CardInputs) -> str | None:
    """The base model as a Hub id; None when a local folder was fine-tuned (the Hub resolves ids only)."""
    hub = _HUB_ID.fullmatch(card.base_model) and not card.train_params.get("offline_fallback")
    return card.base_model if hub else None


def baseline_label(baseline: Mapping[str, Any]) -> str:
    name = str(baseline.get("name") or "baseline")
    return "TF-IDF" if "tfidf" in name.replace("-", "").lower() else name


def truncation_rule(tokens: int) -> str:
    head = head_tokens(tokens)
    return f"head + tail: a longer review keeps its first {head} and last {tokens - head} tokens"


def _challenger(card: CardInputs) -> Mapping[str, Any]:
    return card.evaluation.get("challenger") or {}


def failing_capabilities(card: CardInputs) -> dict[str, float]:
    by_capability = pass_rates((card.evaluation.get("behaviour") or {}).get("by_capability"))
    return {c: r for c, r in by_capability.items() if r is not None and r < CAPABILITY_BAR}


def _slice_limitations(card: CardInputs) -> list[str]:
    found = []
    overall, total = _challenger(card).get("accuracy"), _challenger(card).get("rows")
    slices = card.evaluation.get("slices") or []
    for s in slices:  # the length buckets; the truncated share has its own line below
        accuracy, rows = s.get("accuracy"), s.get("rows") or 0
        if (s.get("name") != "truncated" and isinstance(accuracy, int | float)
                and isinstance(overall, int | float) and rows >= MIN_SLICE_ROWS
                and overall - accuracy >= SLICE_GAP):
            found.append(f"Weak on the `{md(s.get('name'))}` slice: accuracy {accuracy:.3f} on {rows:,} "
                         f"test reviews, {overall - accuracy:.3f} below its {overall:.3f} overall.")
    truncated = next((s for s in slices if s.get("name") == "truncated"), None)
    if truncated and truncated.get("rows") and total:
        tokens, cut = card.serving_tokens, truncated["rows"]
        found.append(f"{cut / total:.1%} of the test reviews ({cut:,} of {total:,}) are longer than {tokens} "
                     f"tokens and are cut ({truncation_rule(tokens)}); accuracy on them "
                     f"{fmt(truncated.get('accuracy'))}.")
    return found


def evidence_limitations(card: CardInputs) -> list[str]:
    """Limitations this version's evaluation shows; empty when it shows none (nothing is invented)."""
    found = _slice_limitations(card)
    tests = (card.evaluation.get("behaviour") or {}).get("tests") or []
    for capability, rate in failing_capabilities(card).items():
        names = ", ".join(f"`{md(t.get('name'))}`" for t in tests
                          if t.get("capability") == capability and t.get("passed") != t.get("cases"))
        found.append(f"Fails the `{md(capability)}` behavioural capability: {rate:.0%} of its cases pass"
                     + (f" (failing tests: {names})." if names else "."))
    calibration = card.evaluation.get("calibration") or {}
    if (ece := calibration.get("ece")) is not None and ece > ECE_BAR:
        gap = sum((b.get("count") or 0) * ((b.get("confidence") or 0) - (b.get("accuracy") or 0))
                  for b in calibration.get("bins") or [])
        lean = ", over-confident" if gap > 0 else ", under-confident" if gap < 0 else ""
        found.append(f"Poorly calibrated (ECE {ece:.3f}{lean}): read P(positive) as a score, not a "
                     "probability.")
    overall, baseline = _challenger(card).get("accuracy"), card.evaluation.get("baseline") or {}
    b = baseline.get("accuracy")
    if isinstance(overall, int | float) and isinstance(b, int | float) and overall - b < BASELINE_MARGIN:
        found.append(f"Barely beats (or trails) a {baseline_label(baseline)} baseline: accuracy "
                     f"{overall:.3f} against {b:.3f} on the same rows.")
    int8 = card.evaluation.get("int8") or {}
    if int8.get("decision") == "int8" and (agreement := int8.get("agreement")) is not None and agreement < 1:
        found.append(f"Served as int8: its predictions differ from fp32 on {1 - agreement:.1%} of "
                     f"{fmt(int8.get('rows'))} test reviews.")
    return found


def limitations(card: CardInputs) -> list[str]:
    name = dataset_name(card)
    domain = (f"Trained only on {name} {'movie ' if name == 'IMDB' else ''}reviews: expect lower accuracy "
              "on product reviews; tweets, support tickets or other text are outside its training data.")
    return [*evidence_limitations(card), domain, *STANDING]


def front_matter(card: CardInputs) -> dict[str, Any]:
    """The Hub's metadata block; model-index carries the test-split results exactly as measured."""
    tags = ["sentiment-analysis", "text-classification", "mlflow"]
    tags += [t for t in ("distilbert",) if t in card.base_model.lower()]
    meta: dict[str, Any] = {"language": "en", "license": card.license, "library_name": "transformers",
                            "pipeline_tag": "text-classification", "tags": tags}
    if dataset := hub_dataset(card):
        meta["datasets"] = [dataset]
    if base := hub_base_model(card):
        meta["base_model"] = base
    challenger = _challenger(card)
    at = f"({card.serving_tokens} tokens)"
    results = [{"type": key, "value": float(challenger[key]), "name": f"{name} {at}"}
               for key, name in zip(HEADLINE, ("Accuracy", "F1", "ROC AUC"), strict=True)
               if isinstance(challenger.get(key), int | float)]
    if results:
        evaluated_on = {"name": dataset_name(card), "split": "test",
                        "type": dataset or card.dataset.get("source") or "unknown"}
        meta["model-index"] = [{"name": card.registered_model, "results": [{
            "task": {"type": "text-classification", "name": "Text Classification"},
            "dataset": evaluated_on, "metrics": results}]}]
    return meta


def _model_details(card: CardInputs) -> list[str]:
    p, m = card.train_params, card.train_metrics
    freeze = [*(["embeddings"] if p.get("freeze_embeddings") else []),
              *([f"lowest {p['freeze_layers']} transformer layers"] if p.get("freeze_layers") else [])]
    batch = p.get("batch_size")
    fallback = f" (offline fallback for {p.get('base_model')})" if p.get("offline_fallback") else ""
    def param(key: str, digits: int = 3) -> str:
        return fmt(p.get(key), digits, missing=NOT_RECORDED)

    rows = [("Name", card.served_name), ("Version", card.version), ("Registered as", card.registered_model),
            ("Base model", card.base_model + fallback), ("Epochs", param("epochs")),
            ("Batch size", "auto (chosen by data size and device)" if batch == 0 else param("batch_size")),
            ("Learning rate", param("learning_rate", 6)), ("Max length", param("max_length")),
            ("Truncation", truncation_rule(int(p.get("max_length") or card.serving_tokens))),
            ("Frozen", ", ".join(freeze) or "nothing (full fine-tuning)"),
            ("Precision", param("precision")), ("Device", card.device or NOT_RECORDED),
            ("Train seconds", fmt(m.get("train_seconds"), 1)), ("Samples/s", fmt(m.get("samples_per_s"), 1)),
            ("Validation accuracy", fmt(m.get("val_accuracy")))]
    return table(["", ""], [[k, md(v)] for k, v in rows])


def _behaviour(card: CardInputs) -> list[str]:
    behaviour = card.evaluation.get("behaviour")
    if not behaviour:
        return [NOT_MEASURED]
    suite = f"{md(behaviour.get('suite'))} v{md(behaviour.get('version'))}"
    failing = ", ".join(f"{md(k)} ({pct(v)})" for k, v in failing_capabilities(card).items()) or "none"
    by_type = pass_rates(behaviour.get("by_type"))
    return [(f"{suite}: {fmt(behaviour.get('passed'))} of {fmt(behaviour.get('cases'))} cases pass "
             f"({pct(behaviour.get('pass_rate'))})."), "",
            *table(["type", "pass rate"], [[md(t), pct(r)] for t, r in by_type.items()]), "",
            f"Capabilities below {CAPABILITY_BAR:.0%}: {failing}."]


def _evaluation(card: CardInputs) -> list[str]:
    ev, c = card.evaluation, _challenger(card)
    champion, baseline = ev.get("champion") or {}, ev.get("baseline") or {}
    version = ev.get("champion_version")
    precision = md(ev.get("served_precision") or NOT_MEASURED)
    lines = [(f"Held-out test split, {fmt(c.get('rows'))} reviews, scored as served: truncated at "
              f"{card.serving_tokens} tokens, precision {precision}."), ""]
    lines += table(["metric", "this model", f"champion v{version}" if version else "champion",
                    f"{baseline_label(baseline)} baseline" if baseline else "baseline"],
                   [[name, fmt(c.get(k)), fmt(champion.get(k)) + delta(c.get(k), champion.get(k)),
                     fmt(baseline.get(k)) + delta(c.get(k), baseline.get(k))]
                    for k, name in (("accuracy", "accuracy"), ("f1", "F1"), ("roc_auc", "ROC-AUC"))])
    lines += ["", "Deltas in parentheses: this model minus the other, on the same rows.", "",
              "### Slices", ""]
    slices = ev.get("slices")
    lines += table(["slice", "rows", "accuracy", "positive rate"],
                   [[md(s.get("name")), fmt(s.get("rows")), fmt(s.get("accuracy")),
                     pct(s.get("positive_rate"))] for s in slices]) if slices else [NOT_MEASURED]
    calibration = ev.get("calibration") or {}
    scores = ", ".join(f"{name} {fmt(calibration.get(k), 4)}" for k, name in (("ece", "ECE"), ("mce", "MCE"),
                                                                               ("brier", "Brier")))
    lines += ["", "### Calibration", "", f"{scores}." if calibration else NOT_MEASURED]
    lines += ["", "### Behavioural tests", "", *_behaviour(card), "", "### Served precision", ""]
    int8 = ev.get("int8") or {}
    lines.append(f"Decision: {md(int8.get('decision'))} (accuracy fp32 {fmt(int8.get('accuracy_fp32'))}, "
                 f"int8 {fmt(int8.get('accuracy_int8'))}, agreement {pct(int8.get('agreement'))}, McNemar p "
                 f"{fmt(int8.get('p_value'), 4)} on {fmt(int8.get('rows'))} rows): "
                 f"{md(int8.get('reason', ''))}"
                 if int8 else NOT_MEASURED)
    return lines


def _facts(rows: list[tuple[str, Any]]) -> list[str]:
    return table(["", ""], [[k, md(v if v not in (None, "") else NOT_RECORDED)] for k, v in rows])


def render_model_card(card: CardInputs) -> str:
    """README.md of the version: front matter, then the sections a Hub model card has. The usage example
    is a ```text block: it needs a running predictor, so no doc-command runner should mistake it for one."""
    data = card.dataset
    rows = ", ".join(f"{split} {fmt(n)}" for split, n in (data.get("rows") or {}).items())
    curl = [f"curl -s -X POST http://PREDICTOR_HOST/v1/models/{card.served_name}:predict \\",
            "  -H 'Content-Type: application/json' \\",
            "  -d '{\"instances\": [\"A warm, funny film with a great cast.\"]}'"]
    front = yaml.safe_dump(front_matter(card), sort_keys=False, allow_unicode=True).rstrip()
    lines = ["---", front, "---", "", f"# {md(card.registered_model)} v{md(card.version)}", "",
             description_line(card), "", "## Model details", "", *_model_details(card), "",
             "## Intended use", "", INTENDED_USE, "", OUT_OF_SCOPE, "", "## Training data", "",
             *_facts([("Source", data.get("source")), ("DVC md5", data.get("dvc_md5")),
                      ("DVC remote", data.get("remote")), ("Content hash", data.get("content_hash")),
                      ("Rows", rows)]),
             "", md(data.get("provenance") or f"Provenance: {NOT_RECORDED}."), "",
             "## Evaluation", "", *_evaluation(card), "",
             "## Limitations and biases", "", *(f"- {item}" for item in limitations(card)), "",
             "## Lineage", "",
             *_facts([("MLflow run", card.run_id), ("Git commit", card.git_sha),
                      ("Dataset (DVC md5)", data.get("dvc_md5")), ("DVC remote", data.get("remote")),
                      *((f"Image ({stage})", image) for stage, image in card.images.items()),
                      ("Workflow", card.workflow), ("Run reason", card.run_reason), ("Registered", card.created)]),
             "", "## How to use", "",
             "KServe V1; the answer holds `label` and `probability` (P(positive)) per instance.", "",
             "```text", *curl, "```", ""]
    return "\n".join(lines)


def short_image(image: str) -> str:
    """`<registry>/sentimentops-train:0.1.0@sha256:<64 hex>` -> `sentimentops-train:0.1.0@sha256:<12 hex>`: enough
    to tell images apart in one line (the version's `image.<stage>` tags hold the full value)."""
    ref, _, digest = image.partition("@")
    name = ref.rsplit("/", 1)[-1]
    return f"{name}@{digest[:19]}" if digest else name


def description_line(card: CardInputs) -> str:
    """One line for the registry version's description: the claim, then the lineage that backs it (full ids, to
    copy: the run, the dataset's DVC md5 and remote, the commit; the images each stage ran in)."""
    c, baseline = _challenger(card), card.evaluation.get("baseline") or {}
    accuracy = c.get("accuracy")
    claim = f"{accuracy:.3f} accuracy" if isinstance(accuracy, int | float) else f"accuracy {NOT_MEASURED}"
    if isinstance(b := baseline.get("accuracy"), int | float):
        claim += f" ({baseline_label(baseline)} {b:.3f})"
    rows = c.get("rows")
    on = f" on {rows:,} {dataset_name(card)} test reviews" if isinstance(rows, int) else ""
    md5, remote = card.dataset.get("dvc_md5") or "unknown", card.dataset.get("remote")
    images = ", ".join(f"{stage} {short_image(image)}" for stage, image in card.images.items()) or "none recorded"
    line = (f"{card.registered_model} v{card.version}: {claim}{on} at {card.serving_tokens} tokens; "
            f"run {card.run_id}, data md5 {md5}{f' at {remote}' if remote else ''}, git {card.git_sha}, "
            f"images {images}")
    return " ".join(line.split())
