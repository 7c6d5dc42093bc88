"""The HTTP side of the predictor: KServe V1 and V2 (Open Inference Protocol) routes, the plain `/predict` and
`/health` first promised to users, `/metrics`, readiness that means it, and one place where every failure becomes
a status (steps/serve/errors.py). The contract is docs/serving.md.

Why our own FastAPI app and not kserve.ModelServer's: its V1/V2 handlers decode bodies before the model sees them,
so size limits, content-type and UTF-8 errors, and overload could not be answered from one status table, and it
has no batching (docs/measurements.md, KServe). The routes, bodies and answers are KServe's, so clients and the
InferenceService see the same protocol.

Longer than 350 lines: the V1 `:explain` verb lives here too, because it shares every step of a request with
`:predict` (name, readiness, body limits, parsing, the status table); only its scoring differs, and that is
steps/core/explain.py.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sentimentops.steps.core.contract import LABELS, label_of
from sentimentops.steps.core.explain import Explainer, Explanation, WordWeight, backend_scorer
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.manifests import git_sha
from sentimentops.steps.core.production import (
    DEFERRED_ORIGIN,
    MIRROR_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    UNKNOWN_PREDICTION,
    parse_label,
    sane_request_id,
    text_feedback_id,
    valid_capture_id,
)
from sentimentops.steps.core.psi import RECORD_DECIMALS
from sentimentops.steps.serve import faults
from sentimentops.steps.serve.capture import Production
from sentimentops.steps.serve.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_response,
)
from sentimentops.steps.serve.metrics import CONTENT_TYPE, Metrics
from sentimentops.steps.serve.model import SentimentModel, check_texts, parse_instances

log = get_logger("sentimentops.serve.app")
JSON_TYPES = ("application/json", "application/*+json")

TEXT_ITEM = {"oneOf": [{"type": "string", "minLength": 1},
                       {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}]}
V1_BODY = {"type": "object", "required": ["instances"],
           "properties": {"instances": {"type": "array", "minItems": 1, "items": TEXT_ITEM}}}
V2_BODY = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"},
    "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
        "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
            "name": {"type": "string", "enum": ["text"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 2},
            "datatype": {"type": "string", "enum": ["BYTES"]},
            "data": {"type": "array", "minItems": 1, "items": {"type": "string"}}}}}}}
PREDICTION_FIELDS: dict[str, Any] = {
    "label": {"type": "string", "enum": ["negative", "positive"]},
    "probability": {"type": "number", "minimum": 0, "maximum": 1, "description": "P(positive)"},
    "model_name": {"type": "string"}, "model_version": {"type": "string"}}
PREDICTION = {"type": "object", "properties": PREDICTION_FIELDS}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
REQUEST_ID = {"type": "string", "description": f"the request id, also the {REQUEST_ID_HEADER} header: the client's "
              f"header when it matches {REQUEST_ID_PATTERN.pattern}, else made here (also when this replica already "
              "captured that id: a capture id names one text)"}
LABEL_IN = {"oneOf": [{"type": "string", "description": "a label name or its first three letters, any case, or the "
                       "class id as a string", "enum": [*LABELS, *(n[:3] for n in LABELS),
                                                        *(str(i) for i in range(len(LABELS)))]},
                      {"type": "integer", "enum": list(range(len(LABELS)))}]}
FEEDBACK_BODY = {"type": "object", "required": ["label"], "additionalProperties": False, "properties": {
    "id": {"type": "string", "minLength": 1, "description": "a captured instance's id (capture must be on)"},
    "text": {"type": "string", "minLength": 1, "description": "the text labelled (instead of id)"},
    "label": LABEL_IN}}
FEEDBACK_ANSWER = {"type": "object", "properties": {
    "id": {"type": "string"}, "label": {"type": "string", "enum": list(LABELS)},
    "predicted": {"enum": [*LABELS, None]}, "correct": {"type": ["boolean", "null"]},
    "model_version": {"type": ["string", "null"]},
    "status": {"type": "string", "enum": ["recorded", "duplicate", "deferred"],
               "description": "deferred (202): this replica did not capture the id; the label is stored and joined "
                              "to its capture at ingest, so predicted, correct and model_version are null"}}}
WORD = {"type": "object", "properties": {
    "word": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"},
    "weight": {"type": "number", "description": "P(positive) minus P(positive) without the word"}}}
EXPLANATION = {"type": "object", "properties": {
    **PREDICTION_FIELDS, "method": {"type": "string"}, "occlusion": {"type": "string"},
    "words": {"type": "array", "items": WORD}, "top": {"type": "array", "items": WORD},
    "attributed_words": {"type": "integer"}, "total_words": {"type": "integer"}, "truncated": {"type": "boolean"},
    "forward_passes": {"type": "integer"}}}


@dataclass(frozen=True)
class ExplainSettings:
    """Bounds of `:explain` (docs/serving.md, Explanations). One instance costs up to 1 + max_words forward passes
    (a 512-token review: ~65 times a prediction), hence few instances per request and one explanation at a time."""

    max_instances: int = 8      # more in one request: 400
    max_words: int = 64         # words attributed per instance; the rest is reported as not attributed
    top_k: int = 5              # words in `top`
    max_waiting: int = 4        # requests queued behind the running one; more: 503 overloaded
    batch_tokens: int = 2048    # padded tokens per model call
    nice: int = 10              # the explain thread's niceness (Linux, per thread): predict's workers come first


def _word(w: WordWeight) -> dict[str, Any]:
    return {"word": w.word, "start": w.start, "end": w.end, "weight": round(w.weight, RECORD_DECIMALS)}


ERROR_CODES = (("400", "invalid input"), ("404", "unknown model name"), ("413", "payload or instance count too large"),
               ("415", "not JSON"), ("503", "overloaded or not ready (Retry-After)"))
FEEDBACK_DEFERRED = ("deferred: an id this replica did not capture, stored and joined to its capture at ingest "
                     "(feedback_unknown_ids = defer)")
FEEDBACK_ERRORS = (("400", "invalid body or label"), ("404", "unknown id, capture off, or no production store"),
                   ("409", "the id already has another label"), ("413", "payload too large"), ("415", "not JSON"),
                   ("503", "not ready, or labels are waiting for storage (Retry-After)"))


def _body(schema: dict, answer: dict, errors: tuple[tuple[str, str], ...] = ERROR_CODES,
          accepted: str = "") -> dict:
    """OpenAPI extras of a POST route: its body, the answer (200, and 202 where `accepted` says when), errors."""
    ok = {"content": {"application/json": {"schema": answer}}, "headers": {REQUEST_ID_HEADER: {"schema": REQUEST_ID}}}
    responses = {"200": {"description": "answer", **ok}}
    if accepted:
        responses["202"] = {"description": accepted, **ok}
    for code, what in errors:
        responses[code] = {"description": what, "content": {"application/json": {"schema": ERROR}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": responses}


# Oversized bodies up to this size are drained (read and dropped) before the 413; larger ones are not read at all.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


async def read_json(request: Request, max_bytes: int) -> Any:
    """Content type, size (413; nothing past the limit is kept), UTF-8 and JSON checks, in that order."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and content_type not in JSON_TYPES:
        raise UnsupportedMediaType(f"content type {content_type!r}: send application/json")
    declared = request.headers.get("content-length")
    declared_size = int(declared) if declared is not None and declared.isdigit() else None
    if declared_size is not None and declared_size > DRAIN_LIMIT_BYTES:
        raise PayloadTooLarge(f"body of {declared} bytes: at most {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    too_large = declared_size is not None and declared_size > max_bytes
    async for chunk in request.stream():
        size += len(chunk)
        too_large = too_large or size > max_bytes
        if too_large:
            # Read and drop the rest (bounded) before answering: a 413 sent mid-upload closes the connection
            # while the client is still sending, and the client sees a reset instead of the 413 (a flaky
            # "huge payload" case under load). Memory stays bounded: nothing past the limit is kept.
            chunks.clear()
            if size > DRAIN_LIMIT_BYTES:
                break
            continue
        chunks.append(chunk)
    if too_large:
        raise PayloadTooLarge(f"body of {declared} bytes: at most {max_bytes}" if declared_size is not None
                              else f"body over {max_bytes} bytes")
    try:
        return orjson.loads(b"".join(chunks))  # strict: invalid UTF-8 and lone surrogates are errors, not text
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"body is not valid JSON (UTF-8): {err}") from None


def parse_v2(payload: Any) -> tuple[list[str], str | None, list[str]]:
    """V2 inference request -> (texts, request id, requested outputs)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) or not payload["inputs"]:
        raise InvalidInput('expected a JSON object with "inputs": [{"name": "text", "datatype": "BYTES", ...}]')
    inputs = payload["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput('expected exactly one input tensor, "text"')
    tensor = inputs[0]
    if tensor.get("name") != "text":
        raise InvalidInput(f'input name must be "text", got {tensor.get("name")!r}')
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(f'input "text": datatype must be BYTES, got {tensor.get("datatype")!r}')
    shape, data = tensor.get("shape"), tensor.get("data")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise InvalidInput('input "text": shape must be [N] or [N, 1] with positive integers')
    if isinstance(data, list) and data and all(isinstance(row, list) for row in data):
        data = [item for row in data for item in row]  # row-major nested form
    texts = check_texts(data, 'input "text": data')
    count = shape[0] * (shape[1] if len(shape) == 2 else 1)
    if count != len(texts):
        raise InvalidInput(f'input "text": shape {shape} says {count} elements, data has {len(texts)}')
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput('"id" must be a string')
    wanted = payload.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                               for o in wanted):
        raise InvalidInput('"outputs" must be a list of {"name": ...}')
    names = [o["name"] for o in wanted]
    unknown = set(names) - {"label", "probability"}
    if unknown:
        raise InvalidInput(f"unknown outputs {sorted(unknown)}: this model has label and probability")
    return texts, request_id, names or ["label", "probability"]


def request_id_of(request: Request) -> str:
    """The client's X-Request-Id when it is sane (production.REQUEST_ID_PATTERN), else a fresh one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if sane_request_id(given) else uuid.uuid4().hex


def parse_feedback(payload: Any) -> tuple[str | None, str | None, int]:
    """POST /v1/feedback body -> (id, text, class id): exactly one of id and text, and a label."""
    if not isinstance(payload, dict) or "label" not in payload:
        raise InvalidInput('expected {"id": "<request id>", "label": ...} or {"text": "...", "label": ...}')
    unknown = set(payload) - {"id", "text", "label"}
    if unknown:
        raise InvalidInput(f"unknown field(s) {sorted(unknown)}: expected id or text, and label")
    if ("id" in payload) == ("text" in payload):
        raise InvalidInput('give exactly one of "id" (a captured request) and "text"')
    try:
        label = parse_label(payload["label"])
    except ValueError as err:
        raise InvalidInput(str(err)) from None
    if "id" in payload:
        if not isinstance(payload["id"], str) or not payload["id"]:
            raise InvalidInput('"id" must be a non-empty string')
        return payload["id"], None, label
    text = payload["text"]
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput('"text" must be a non-empty string')
    return None, text, label


def create_app(model: SentimentModel, metrics: Metrics, *, load_in_background: bool = True,
               explain: ExplainSettings | None = None, production: Production | None = None) -> FastAPI:
    state: dict[str, bool | str | None] = {"draining": False, "load_error": None}
    fault = faults.from_env()  # off unless SENTIMENTOPS_SERVE_FAULT_* is set (canary tests)
    explain = explain or ExplainSettings()

    def lower_priority() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), explain.nice)  # Linux: this thread only
        except (OSError, AttributeError):  # not Linux, or not allowed: still one thread, on one core at a time
            pass

    # One explanation at a time, off the event loop, through the backend's own calls (ONNX: single-threaded, so
    # at most one core goes to explanations), at a lower priority, and never through the batcher: its queue, its
    # metrics and its drift records are predictions', and an explanation's occluded variants are not traffic.
    explain_pool = ThreadPoolExecutor(1, thread_name_prefix="explain", initializer=lower_priority)
    explain_state: dict[str, Any] = {"explainer": None, "waiting": 0}

    def explainer() -> Explainer:
        if explain_state["explainer"] is None:  # built in the explain thread, after the model loaded
            explain_state["explainer"] = Explainer(
                model.encoder.tokenizer, backend_scorer(model.backend, model.encoder.pad_id),
                max_tokens=model.encoder.max_tokens, max_words=explain.max_words, top_k=explain.top_k,
                batch_tokens=explain.batch_tokens)
        return explain_state["explainer"]

    def explain_texts(texts: list[str]) -> list[Explanation]:
        found = [explainer()(text) for text in texts]
        metrics.explain_passes.inc(sum(e.forward_passes for e in found))
        return found

    def load() -> None:
        try:
            model.load()
        except Exception as exc:  # noqa: BLE001 - stay up and not ready, with the reason: no crash loop
            state["load_error"] = f"{type(exc).__name__}: {exc}"
            log.error("model %s NOT loaded from %s: %s (the server stays up and answers 503 not ready)",
                      model.name, model.model_dir, state["load_error"])

    async def lifespan(app: FastAPI):
        if not model.ready and load_in_background:
            threading.Thread(target=load, name="model-load", daemon=True).start()
        if production is not None:
            production.start()
        yield
        try:
            await asyncio.to_thread(model.stop)  # after uvicorn drained the connections: finish the queue
            explain_pool.shutdown(wait=False)
        finally:
            if production is not None:
                await asyncio.to_thread(production.stop)  # the last captures and labels go to the store

    app = FastAPI(title="sentimentops predictor", version="1", lifespan=lifespan,
                  description="KServe V1/V2 sentiment predictor; see docs/serving.md")
    app.state.serve = state

    def ready_or_raise() -> None:
        if state["draining"]:
            raise NotReady("the server is shutting down")
        if not model.ready:
            raise NotReady(f"model not ready: {state['load_error']}" if state["load_error"]
                           else "model not ready: loading and warming up")

    def check_name(name: str) -> None:
        if name != model.name:
            raise NotFound(f"model {name!r} is not served here (this server serves {model.name!r})")

    def fail(exc: Exception) -> tuple[JSONResponse, int, str]:
        status, body, headers = error_response(exc)
        if status.code >= 500 and status.reason == "internal":
            log.error("internal error", exc_info=exc)
        return JSONResponse(body, status.code, headers), status.code, status.reason

    async def handle(protocol: str, request: Request, name: str | None, answer: Callable[[Any, dict], Any],
                     observe: Callable[[str, int, float, str | None], None] = metrics.observe_request) -> Response:
        start = time.perf_counter()
        reason = None
        # an answer may replace the id (V2: the body's own id); a router's mirrored copy is answered, not captured
        context: dict[str, Any] = {"rid": request_id_of(request),
                                   "mirror": request.headers.get(MIRROR_HEADER) is not None}
        try:
            if name is not None:
                check_name(name)
            ready_or_raise()
            if fault:
                await fault.apply()
            payload = await read_json(request, model.options.limits.max_payload_bytes)
            body = await answer(payload, context)
            code = context.get("code", 200)  # an answer may accept without completing (feedback deferred: 202)
            response = JSONResponse(body, status_code=code)
        except Exception as exc:  # noqa: BLE001 - the status table decides, nothing escapes as a bare 500
            response, code, reason = fail(exc)
        response.headers[REQUEST_ID_HEADER] = context["rid"]
        observe(protocol, code, time.perf_counter() - start, reason)
        return response

    def capture(context: dict[str, Any], texts: list[str], probs: Any) -> None:
        """Sampled requests into the capture buffer: memory only, and never a failed request. A client that reuses
        an id this replica captured (V2 bodies all numbered "1") gets a fresh one in the X-Request-Id header, so a
        capture id always names one text and feedback cannot label the wrong one."""
        if production is None or not production.capturing:
            return
        if not production.sampled():
            production.not_sampled(context["rid"])
            return
        try:
            context["rid"] = production.unique_id(context["rid"])
            production.capture(context["rid"], texts, probs, model.info.name, model.info.version)
        except Exception:  # a capture bug must not fail the prediction it would have recorded
            log.exception("capture failed; the request is answered without it")
            metrics.capture_dropped.labels("error").inc(len(texts))

    async def v1_answer(payload: Any, context: dict) -> dict:
        texts = parse_instances(payload)
        probs = await model.predict_async(texts)
        if not context["mirror"]:
            capture(context, texts, probs)
        return {"id": context["rid"], "predictions": model.render(probs)}

    async def v2_answer(payload: Any, context: dict) -> dict:
        texts, request_id, names = parse_v2(payload)
        if sane_request_id(request_id):
            context["rid"] = request_id
        probs = await model.predict_async(texts)
        if not context["mirror"]:
            capture(context, texts, probs)
        tensors = {"label": {"name": "label", "datatype": "BYTES", "shape": [len(texts)],
                             "data": [label_of(p) for p in probs]},
                   "probability": {"name": "probability", "datatype": "FP32", "shape": [len(texts)],
                                   "data": [round(float(p), RECORD_DECIMALS) for p in probs]}}
        out = {"model_name": model.info.name, "model_version": model.info.version,
               "outputs": [tensors[n] for n in names]}
        out["id"] = request_id if request_id is not None else context["rid"]
        return out

    async def explain_answer(payload: Any, context: dict) -> dict:
        texts = parse_instances(payload)
        if len(texts) > explain.max_instances:
            raise InvalidInput(f"{len(texts)} instances: at most {explain.max_instances} per :explain request "
                               f"(each costs up to {1 + explain.max_words} forward passes)")
        model.encode(texts)  # :predict's checks: no tokens left, too long under truncation=reject
        if explain_state["waiting"] > explain.max_waiting:
            raise Overloaded(f"{explain_state['waiting']} explanations in progress or waiting: retry later")
        explain_state["waiting"] += 1  # the event loop's thread alone touches it: no lock
        try:
            found = await asyncio.get_running_loop().run_in_executor(explain_pool, explain_texts, texts)
        finally:
            explain_state["waiting"] -= 1
        return {"id": context["rid"], "explanations": [
            {"label": e.label, "probability": round(e.p_positive, RECORD_DECIMALS), "model_name": model.info.name,
             "model_version": model.info.version, "method": e.method, "occlusion": e.occlusion,
             "words": [_word(w) for w in e.words], "top": [_word(w) for w in e.top],
             "attributed_words": e.attributed_words, "total_words": e.total_words, "truncated": e.truncated,
             "forward_passes": e.forward_passes} for e in found]}

    # Text feedback is scored here, unbatched and off the event loop, like a prediction but not counted as one
    # (no prediction metrics, no drift record, no capture): a label is not traffic. Two at a time at most.
    feedback_slots = asyncio.Semaphore(2)

    def remembered(feedback_id: str, label: int) -> dict | None:
        """The duplicate answer for an id this replica already accepted; Conflict for another label."""
        prior = production.memo.get(feedback_id) if production is not None else None
        if prior is None:
            return None
        if prior["label"] != LABELS[label]:
            raise Conflict(f"id {feedback_id!r} already has the label {prior['label']!r}: the first label stands")
        return {**prior, "status": "duplicate"}

    def defer(feedback_id: str, label: int, context: dict) -> dict:
        """A label for an id another replica may have captured: stored without text (DEFERRED_ORIGIN), joined to
        the capture by id at ingest; 202, remembered like any label (duplicate / 409), not counted as correct or
        not (this replica does not know the prediction)."""
        assert production is not None
        out = store_label({"id": feedback_id, "ts": time.time(), "text": None, "label": label,
                           "predicted": UNKNOWN_PREDICTION, "model_version": "", "origin": DEFERRED_ORIGIN},
                          {"predicted": None, "correct": None, "model_version": None, "status": "deferred"})
        context["code"] = 202
        return out

    def store_label(row: dict, answer: dict) -> dict:
        """One label into the feedback buffer (503 when it is full: nothing recorded), remembered for idempotence;
        returns the answer."""
        assert production is not None
        if not production.feedback.offer([row]):
            raise Overloaded(f"{len(production.feedback)} labels are waiting for the production store: retry "
                             "later (nothing was recorded)")
        out = {"id": row["id"], "label": LABELS[row["label"]], **answer}
        production.memo.put(row["id"], out)
        return out

    async def feedback_answer(payload: Any, context: dict) -> dict:
        if production is None or production.store is None:
            raise NotFound("feedback is off: this predictor has no production store (production_store)")
        given_id, text, label = parse_feedback(payload)
        if given_id is not None:
            if not production.capturing:
                raise NotFound(f"id {given_id!r}: capture is off on this predictor, so no request id can be "
                               'looked up; send {"text": ..., "label": ...} instead')
            feedback_id, origin = given_id, "api:id"
            found = remembered(feedback_id, label)
            if found is not None:
                return found  # a duplicate of a deferred label answers 200 "duplicate" too
            captured = production.index.get(feedback_id)
            if captured is None and production.answered_unsampled(feedback_id):
                raise NotFound(f"id {feedback_id!r}: this replica answered that request without capturing it "
                               f"(capture_rate {production.settings.rate:g} samples requests); send "
                               '{"text": ..., "label": ...} instead')
            if captured is None and production.settings.defer_unknown_ids and valid_capture_id(feedback_id):
                return defer(feedback_id, label, context)
            if captured is None:
                raise NotFound(f"id {feedback_id!r} is not among the {production.settings.index} most recent "
                               "instances this replica captured (ids are kept in memory per replica, recent "
                               'ones only); send {"text": ..., "label": ...} instead')
            text, predicted, version = captured.text, captured.predicted, captured.model_version
        else:
            assert text is not None, "parse_feedback returns an id or a text"
            feedback_id, origin = text_feedback_id(text), "api:text"
            found = remembered(feedback_id, label)
            if found is not None:
                return found
            async with feedback_slots:
                scored = (await asyncio.to_thread(model.predict_texts, [text]))[0]
            found = remembered(feedback_id, label)  # the same text may have been labelled while it was scored
            if found is not None:
                return found
            predicted, version = LABELS.index(scored["label"]), model.info.version
        correct = label == predicted
        out = store_label({"id": feedback_id, "ts": time.time(), "text": text, "label": label, "predicted": predicted,
                           "model_version": version, "origin": origin},
                          {"predicted": LABELS[predicted], "correct": correct, "model_version": version,
                           "status": "recorded"})
        metrics.feedback.labels(version, "true" if correct else "false").inc()
        return out

    v1_extra = _body(V1_BODY, {"type": "object", "properties": {
        "id": REQUEST_ID, "predictions": {"type": "array", "items": PREDICTION}}})
    v2_extra = _body(V2_BODY, {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"},
        "id": {"type": "string", "description": "the request's own id if given, else the generated one"},
        "outputs": {"type": "array"}}})

    @app.post("/v1/models/{model_name}:predict", openapi_extra=v1_extra, tags=["v1"])
    async def v1_predict(model_name: str, request: Request):
        return await handle("v1", request, model_name, v1_answer)

    @app.post("/v1/models/{model_name}:explain", openapi_extra=_body(V1_BODY, {"type": "object", "properties": {
        "id": REQUEST_ID, "explanations": {"type": "array", "items": EXPLANATION}}}), tags=["v1"])
    async def v1_explain(model_name: str, request: Request):
        return await handle("explain", request, model_name, explain_answer, metrics.observe_explain)

    @app.post("/predict", openapi_extra=v1_extra, tags=["plain"])
    async def plain_predict(request: Request):
        return await handle("predict", request, None, v1_answer)

    @app.post("/v2/models/{model_name}/infer", openapi_extra=v2_extra, tags=["v2"])
    async def v2_infer(model_name: str, request: Request):
        return await handle("v2", request, model_name, v2_answer)

    @app.post("/v1/feedback", openapi_extra=_body(FEEDBACK_BODY, FEEDBACK_ANSWER, FEEDBACK_ERRORS, FEEDBACK_DEFERRED),
              tags=["feedback"])
    async def feedback(request: Request):
        return await handle("feedback", request, None, feedback_answer, metrics.observe_feedback)

    def readiness(body: Callable[[], dict]) -> Response:
        try:
            ready_or_raise()
        except NotReady as exc:
            return fail(exc)[0]
        return JSONResponse(body())

    # The commit the predictor's code came from (SENTIMENTOPS_GIT_SHA, baked into the image by Dockerfile.serve's
    # GIT_SHA build argument), read once: the last link of response -> model version -> run -> dataset -> commit.
    code_sha = git_sha()

    @app.get("/health", tags=["plain"])
    async def health():
        return readiness(lambda: {"status": "ready", "model_name": model.info.name,
                                  "model_version": model.info.version, "backend": model.backend_name,
                                  "git_sha": code_sha})

    @app.get("/", tags=["v1"])
    async def root_live():
        # KServe's model server answers GET / with {"status": "alive"} (kserve/protocol/rest/server.py registers
        # dataplane.live at "/"), and its InferenceRESTClient checks V1 liveness there: status == "alive".
        return {"status": "alive"}

    @app.get("/v2/health/live", tags=["v2"])
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready():
        return readiness(lambda: {"ready": True})

    @app.get("/v2/models/{model_name}/ready", tags=["v2"])
    async def v2_model_ready(model_name: str):
        check_name(model_name)
        return readiness(lambda: {"name": model_name, "ready": True})

    @app.get("/v1/models/{model_name}", tags=["v1"])
    async def v1_model_ready(model_name: str):
        check_name(model_name)
        return readiness(lambda: {"name": model_name, "ready": True})

    @app.get("/v1/models", tags=["v1"])
    async def v1_models():
        return {"models": [model.name]}

    @app.get("/v2", tags=["v2"])
    async def v2_server():
        return {"name": "sentimentops", "version": "1", "extensions": []}

    @app.get("/v2/models/{model_name}", tags=["v2"])
    async def v2_model(model_name: str):
        check_name(model_name)
        return {"name": model.name, "versions": [model.info.version], "platform": model.backend_name or "loading",
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probability", "datatype": "FP32", "shape": [-1]}]}

    @app.get("/metrics", tags=["plain"])
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.exception_handler(NotFound)
    @app.exception_handler(NotReady)
    async def table_errors(request: Request, exc: Exception):
        return fail(exc)[0]

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError):
        return fail(InvalidInput(f"invalid request: {exc.errors()[:3]}"))[0]

    @app.exception_handler(StarletteHTTPException)
    async def http_errors(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, getattr(exc, "headers", None) or {})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return fail(exc)[0]

    return app
