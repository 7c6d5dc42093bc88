"""The predictor's Prometheus metrics, exactly as docs/metrics.md names them (base units, `sentiment_` prefix,
low-cardinality labels). One registry per server (so tests can run several), with the process collector so
`process_resident_memory_bytes` is there for the benchmark's RSS column."""
from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sentimentops.steps.core.contract import LABELS, MAX_TOKENS, label_of

PROTOCOLS = ("v1", "v2", "predict")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.duration = Histogram(
            "sentiment_request_duration_seconds", "Time from request received to response, queueing included.",
            ["protocol", "status"], registry=r,
            buckets=(0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.requests = Counter("sentiment_requests", "Requests answered.", ["protocol", "status"], registry=r)
        self.errors = Counter("sentiment_errors", "Failed requests.", ["protocol", "status", "reason"], registry=r)
        self.batch_size = Histogram("sentiment_batch_size", "Instances per model call after dynamic batching.",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue_depth = Gauge("sentiment_queue_depth", "Instances waiting for the model.", registry=r)
        self.input_tokens = Histogram("sentiment_input_tokens", "Tokens per instance after truncation.",
                                      registry=r, buckets=(8, 16, 32, 64, 128, 256, 384, MAX_TOKENS))
        self.truncated = Counter("sentiment_truncated", f"Instances cut at the {MAX_TOKENS}-token limit.", registry=r)
        self.confidence = Histogram("sentiment_prediction_confidence", "max(p, 1-p) per prediction.",
                                    registry=r, buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
        self.predictions = Counter("sentiment_predictions", "Predictions by label.", ["label"], registry=r)
        self.model_info = Gauge("sentiment_model_info", "What is being served (always 1).",
                                ["model_name", "model_version", "run_id", "backend"], registry=r)
        self.model_ready = Gauge("sentiment_model_ready", "1 once loaded and warmed up.", registry=r)
        # :explain has its own series: one explanation costs up to 1 + max_words forward passes, so counting it in
        # the request metrics above would move the p99 and error ratio that alerts and the canary analysis judge.
        self.explain_duration = Histogram(
            "sentiment_explain_duration_seconds", "Time from :explain request received to response.", ["status"],
            registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0))
        self.explain_requests = Counter("sentiment_explain_requests", ":explain requests answered.", ["status"],
                                        registry=r)
        self.explain_passes = Counter("sentiment_explain_forward_passes",
                                      "Instances scored for explanations (original + one per occluded word).",
                                      registry=r)
        # Production data (docs/serving.md, Capture and feedback): the capture never fails a request, so its
        # trouble shows here only (dropped rows, failed writes), and feedback has its own request series for the
        # same reason as :explain (it is not traffic the alerts and the canary analysis judge).
        self.captured = Counter("sentiment_captured", "Instances captured (sampled and buffered for storage).",
                                registry=r)
        self.capture_dropped = Counter("sentiment_capture_dropped", "Sampled instances not captured.", ["reason"],
                                       registry=r)
        self.capture_writes = Counter("sentiment_capture_writes", "Capture part writes to the production store.",
                                      ["outcome"], registry=r)
        self.capture_buffered = Gauge("sentiment_capture_buffered", "Captured rows waiting to be written.",
                                      registry=r)
        self.feedback = Counter("sentiment_feedback", "Feedback labels accepted (once per id), by whether the "
                                "model version's prediction was right.", ["model_version", "correct"], registry=r)
        self.feedback_requests = Counter("sentiment_feedback_requests", "POST /v1/feedback answers.", ["status"],
                                         registry=r)
        self.feedback_writes = Counter("sentiment_feedback_writes", "Feedback part writes to the production store.",
                                       ["outcome"], registry=r)
        self.feedback_buffered = Gauge("sentiment_feedback_buffered", "Feedback rows waiting to be written.",
                                       registry=r)
        for outcome in ("ok", "error"):
            self.capture_writes.labels(outcome)
            self.feedback_writes.labels(outcome)
        self.capture_dropped.labels("buffer_full")
        self.feedback_requests.labels("200")
        self.explain_requests.labels("200")
        self.explain_duration.labels("200")
        # Zero-initialised series, so rate() and ratios exist from the first scrape: a series that first appears
        # with its final count is flat inside every window (rate 0), and a burst served before the first scrape
        # after a (re)start would never be counted. The request counter and the latency histogram start at 0 for
        # every protocol's success status; errors are rarer and other statuses appear on first use.
        for label in LABELS:
            self.predictions.labels(label)
        for protocol in PROTOCOLS:
            self.requests.labels(protocol, "200")
            self.duration.labels(protocol, "200")

    def observe_request(self, protocol: str, status: int, seconds: float, reason: str | None) -> None:
        self.duration.labels(protocol, str(status)).observe(seconds)
        self.requests.labels(protocol, str(status)).inc()
        if reason is not None:
            self.errors.labels(protocol, str(status), reason).inc()

    def observe_explain(self, protocol: str, status: int, seconds: float, reason: str | None) -> None:
        """observe_request's signature (the app passes either); the reason is in the status and the body."""
        self.explain_duration.labels(str(status)).observe(seconds)
        self.explain_requests.labels(str(status)).inc()

    def observe_feedback(self, protocol: str, status: int, seconds: float, reason: str | None) -> None:
        """observe_request's signature (the app passes either); the reason is in the status and the body."""
        self.feedback_requests.labels(str(status)).inc()

    def observe_batch(self, lengths: list[int], truncated: int, probs) -> None:
        self.batch_size.observe(len(lengths))
        for n in lengths:
            self.input_tokens.observe(n)
        if truncated:
            self.truncated.inc(truncated)
        for p in probs:
            p = float(p)
            self.confidence.observe(max(p, 1 - p))
            self.predictions.labels(label_of(p)).inc()

    def set_model(self, name: str, version: str, run_id: str, backend: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name, version, run_id, backend).set(1)
        # The served version's feedback series exist at 0 from the start: increase() cannot see a counter's first
        # count when its series appears already above 0, so the canary's first labels would go uncounted.
        for correct in ("true", "false"):
            self.feedback.labels(version, correct)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
