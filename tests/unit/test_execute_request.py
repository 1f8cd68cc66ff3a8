"""What the execution API accepts, with the reason it gives for what it refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sophon.sandbox.models import MAX_CODE_BYTES, ExecuteRequest


def test_defaults() -> None:
    req = ExecuteRequest(code="print(1)")
    assert (req.language, req.timeout, req.thread_id) == ("python", 60, None)


@pytest.mark.parametrize("fields, reason", [
    ({"code": ""}, "at least 1"),
    ({"code": "x" * (MAX_CODE_BYTES + 1)}, "larger than"),
    ({"code": "a\x00b"}, "NUL"),
    ({"code": "x", "timeout": 3601}, "less than or equal"),
    ({"code": "x", "language": "ruby"}, "python"),
    ({"code": "x", "thread_id": "-starts-with-dash"}, "thread_id"),
    ({"code": "x", "thread_id": "a" * 129}, "thread_id"),
    ({"code": "x", "env_vars": {"lower": "v"}}, "uppercase"),
    ({"code": "x", "env_vars": {"PATH": "/evil"}}, "reserved"),
    ({"code": "x", "env_vars": {"LD_PRELOAD": "/x.so"}}, "reserved"),
    ({"code": "x", "env_vars": {"A": "\x00"}}, "invalid value"),
    ({"code": "x", "metadata": {f"k{i}": "v" for i in range(11)}}, "10 keys"),
])
def test_refused_with_a_reason(fields: dict, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        ExecuteRequest(**fields)
