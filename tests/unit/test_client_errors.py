"""The SDK's typed errors: each status its class, with the server's code, sentence and
Retry-After."""

from __future__ import annotations

import json

from sophon.client import LimitExceededError, ServerError, SophonAPIError
from sophon.client._common import error_for


def _body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def test_a_429_is_a_limit_exceeded_error_that_says_when_to_retry() -> None:
    exc = error_for(429, _body("limit_exceeded", "you have 20 sandboxes awake"), "30")
    assert isinstance(exc, LimitExceededError)
    assert (exc.status, exc.code, exc.retry_after) == (429, "limit_exceeded", 30.0)
    assert "20 sandboxes" in exc.message


def test_a_503_without_retry_after_is_a_server_error_with_none() -> None:
    exc = error_for(503, _body("sandbox_unavailable", "the uid range is used up"))
    assert isinstance(exc, ServerError) and exc.retry_after is None
    assert exc.code == "sandbox_unavailable"


def test_a_retry_after_that_is_not_seconds_is_ignored() -> None:
    exc = error_for(503, _body("sandbox_unavailable", "x"), "Wed, 21 Oct 2015 07:28:00 GMT")
    assert isinstance(exc, SophonAPIError) and exc.retry_after is None
