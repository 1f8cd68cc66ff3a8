"""The server's own environment (where operators keep secrets) never reaches a box."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import LiveServer
from tests.security.conftest import Run
from tests.security.helpers import live_server

CANARY_NAME = "SECSUITE_SERVER_CANARY"
CANARY_VALUE = f"server-secret-{secrets.token_hex(12)}"

ENV_PROBE = r"""
import json, os
read, unreadable = {}, []
for pid in sorted(os.listdir("/proc")):
    if not pid.isdigit():
        continue
    paths = [f"/proc/{pid}/environ"]
    try:
        paths += [f"/proc/{pid}/task/{t}/environ" for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        pass
    for path in paths:
        try:
            with open(path, "rb") as f:
                read[path] = f.read().decode(errors="replace")
        except OSError:
            unreadable.append(path)
with open("/proc/self/environ", "rb") as f:
    read["self"] = f.read().decode(errors="replace")
print(json.dumps({"env": dict(os.environ), "read": read, "unreadable": unreadable}))
"""


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    # A process started with this environment, as a user's server is (one forked from
    # the tests' zygote shows the zygote's in /proc/<pid>/environ, the control below).
    with mock.patch.object(LiveServer, "forked", False), \
            live_server(env={CANARY_NAME: CANARY_VALUE,
                             "SOPHON_SECSUITE_CANARY": CANARY_VALUE}) as srv:
        yield srv


def test_server_environment_is_not_in_the_box(run: Run, server: LiveServer) -> None:
    assert server.proc is not None
    # Control: the server process does carry the secret.
    assert CANARY_VALUE in Path(f"/proc/{server.proc.pid}/environ").read_text(errors="replace")

    res = run(ENV_PROBE, language="python")
    assert res["exit_code"] == 0, res
    found = json.loads(res["stdout"])
    assert found["read"]["self"], "the probe could not read its own environment"
    assert "/proc/1/environ" in found["read"] or "/proc/1/environ" in found["unreadable"]
    assert CANARY_NAME not in found["env"]
    blob = res["stdout"] + res["stderr"]
    assert CANARY_VALUE not in blob, "the server's environment leaked into the box"
    assert CANARY_NAME not in blob
    assert "SOPHON_" not in json.dumps(found["env"])

    shell = run(f"env; set; cat /proc/1/environ; grep -a -r {CANARY_NAME} /proc/*/environ; true")
    assert CANARY_VALUE not in shell["stdout"], shell
