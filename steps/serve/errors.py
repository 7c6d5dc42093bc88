"""The one exception -> HTTP status table of the predictor (pinned by tests/unit/test_serve_errors.py).

Every failure a request can meet is one of these exceptions; the app turns it into a status, a `reason` (the
fixed label set of `sentiment_errors_total`, docs/metrics.md) and a JSON body `{"error": message}`. Anything not
in the table is a bug: 500 `internal`, logged with its traceback, the server stays up.
"""
from __future__ import annotations

from dataclasses import dataclass

from kserve.errors import InvalidInput as KServeInvalidInput

RETRY_AFTER_S = 1  # seconds a client should wait after 503 (overloaded / not ready): about one batch cycle


class ServeError(Exception):
    """Base of the predictor's client-visible errors; `message` goes to the client as is."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(ServeError, KServeInvalidInput):
    """The body is not a valid request (malformed JSON, wrong types, empty text, ...). A kserve InvalidInput too,
    so the predictor keeps the 400 it has under kserve.ModelServer."""

    def __init__(self, message: str):
        ServeError.__init__(self, message)
        self.reason = message


class UnsupportedMediaType(ServeError):
    """A body that is not declared as JSON."""


class PayloadTooLarge(ServeError):
    """More bytes than max_payload_bytes, or more instances than max_instances."""


class InputTooLong(ServeError):
    """An instance above the token limit while truncation is configured as `reject`."""


class NotFound(ServeError):
    """An unknown model name in the path; feedback for an id this replica did not capture (or capture is off)."""


class Conflict(ServeError):
    """Feedback for an id that already has a different label (the first label stands; docs/serving.md)."""


class Overloaded(ServeError):
    """The batching queue is full: back off and retry (Retry-After)."""


class NotReady(ServeError):
    """The model is not loaded and warmed up (yet, or its artifact is broken), or the server is draining."""


@dataclass(frozen=True)
class Status:
    code: int
    reason: str  # the `reason` label of sentiment_errors_total (a small fixed set, docs/metrics.md)
    retry_after: bool = False


# Ordered: the first matching class wins (subclasses before their bases).
STATUS_TABLE: tuple[tuple[type[BaseException], Status], ...] = (
    (InvalidInput, Status(400, "invalid_input")),
    (KServeInvalidInput, Status(400, "invalid_input")),
    (InputTooLong, Status(400, "invalid_input")),
    (NotFound, Status(404, "invalid_input")),
    (Conflict, Status(409, "invalid_input")),
    (PayloadTooLarge, Status(413, "payload_too_large")),
    (UnsupportedMediaType, Status(415, "invalid_input")),
    (Overloaded, Status(503, "overloaded", retry_after=True)),
    (NotReady, Status(503, "not_ready", retry_after=True)),
)
INTERNAL = Status(500, "internal")
REASONS = ("invalid_input", "payload_too_large", "overloaded", "internal", "not_ready")


def status_for(exc: BaseException) -> Status:
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return INTERNAL


def error_response(exc: BaseException) -> tuple[Status, dict, dict[str, str]]:
    """(status, JSON body, headers) for an exception; internal errors never leak their text."""
    status = status_for(exc)
    message = str(exc) if status is not INTERNAL else "internal error (logged on the server)"
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status.retry_after else {}
    return status, {"error": message}, headers
