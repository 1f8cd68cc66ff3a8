"""The exception hierarchy. Each error knows its HTTP status and machine code;
the API maps them to ``{"error": code, "message": text}`` in one place."""

from __future__ import annotations


class SophonError(Exception):
    status = 500
    code = "internal_error"
    # Seconds after which trying again may work: sent as Retry-After (a 503, a 429).
    retry_after: int | None = None

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(SophonError):
    status = 400
    code = "invalid_request"


class Unauthorized(SophonError):
    status = 401
    code = "unauthorized"


class Forbidden(SophonError):
    """Authenticated, but not allowed (an admin-only route)."""

    status = 403
    code = "forbidden"


class NotFound(SophonError):
    status = 404
    code = "not_found"


class Conflict(SophonError):
    status = 409
    code = "conflict"


class ThreadBusy(Conflict):
    code = "thread_busy"


class TurnBusy(Conflict):
    code = "turn_in_progress"


class NetworkDisabled(BadRequest):
    code = "network_disabled"


class NetworkNotAllowed(BadRequest):
    """What a session asks its box to reach is past its network list."""

    code = "network_not_allowed"


class BudgetExceeded(SophonError):
    status = 402
    code = "budget_exceeded"


class LimitExceeded(SophonError):
    """A per-user limit (sophon/quotas.py) would be passed; the message names it and its
    setting. ``retry_after``: seconds after which trying again may work (None: waiting
    does not help)."""

    status = 429
    code = "limit_exceeded"


class PreconditionFailed(SophonError):
    """The resource changed since the client read it (a stale ETag)."""

    status = 412
    code = "precondition_failed"


class PayloadTooLarge(SophonError):
    status = 413
    code = "payload_too_large"


class PreconditionRequired(SophonError):
    """Overwriting needs an ETag, so that no change is lost unseen."""

    status = 428
    code = "precondition_required"


class ProviderNotConfigured(SophonError):
    status = 503
    code = "provider_not_configured"


class BoxError(SophonError):
    """The sandbox failed (could not start, died, broke protocol)."""

    status = 503
    code = "sandbox_unavailable"


class BoxUnavailable(BoxError):
    """No box can be had now: a capacity limit (uids, open files, the memory ceiling,
    the start queue) is reached. The message names the limit and its setting."""

    retry_after = 10


class BoxProtocolError(BoxError):
    code = "sandbox_protocol_error"


class BoxRequestError(SophonError):
    """boxd refused a request (file not found, spawn failed, ...)."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
