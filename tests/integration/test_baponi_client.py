"""The official ``baponi`` client, unchanged, against a live Sophon on loopback."""

from __future__ import annotations

import base64
import io
import threading
import time
import zipfile

import httpx
import pytest
from baponi import Baponi
from baponi._events import OutputEvent, ResultEvent, StatusEvent
from baponi.exceptions import APIValidationError, AuthenticationError, ThreadBusyError

from tests.conftest import LiveServer, wait_for


@pytest.fixture
def client(server: LiveServer, api_key: str):
    with Baponi(api_key=api_key, base_url=server.url, max_retries=0) as c:
        yield c


def test_execute_python(client: Baponi) -> None:
    result = client.execute("import sys\nprint('hello', sys.version_info[0])")
    assert result.success and result.exit_code == 0
    assert result.stdout == "hello 3\n"
    assert result.error is None


def test_execute_bash_exit_code_and_stderr(client: Baponi) -> None:
    result = client.execute("echo out; echo err >&2; exit 7", language="bash")
    assert not result.success
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 7)


def test_execute_node(client: Baponi) -> None:
    result = client.execute("console.log(6 * 7)", language="node")
    assert result.stdout == "42\n"


def test_env_vars_reach_the_code(client: Baponi) -> None:
    result = client.execute("echo $GREETING", language="bash", env_vars={"GREETING": "hi"})
    assert result.stdout == "hi\n"


def test_execute_stream_yields_typed_events_in_order(client: Baponi) -> None:
    code = "for i in range(3):\n    print(i, flush=True)\nimport sys; print('e', file=sys.stderr)"
    with client.execute_stream(code) as stream:
        events = list(stream)
        result = stream.get_final_result()
    assert isinstance(events[0], StatusEvent) and events[0].status == "running"
    assert isinstance(events[-1], ResultEvent) and events[-1].status == "success"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    out = "".join(e.data for e in events if isinstance(e, OutputEvent) and e.stream == "stdout")
    assert out == "0\n1\n2\n"
    assert result.stdout == "0\n1\n2\n" and result.stderr == "e\n"
    assert stream.trace_id and stream.trace_id.startswith("trc_")


def test_async_execute_status_and_wait(client: Baponi) -> None:
    handle = client.execute_webhook("echo started; sleep 0.3; echo done", language="bash")
    assert handle.trace_id.startswith("trc_")
    status = handle.wait(poll_interval=0.05, timeout=30)
    assert status.status == "success"
    assert status.stdout == "started\ndone\n" and status.exit_code == 0
    again = client.get_execution(handle.trace_id)
    assert again.status == "success" and again.completed_at


def test_async_cancel(client: Baponi) -> None:
    handle = client.execute_webhook("echo begin; sleep 30", language="bash", thread_id="c1")
    wait_for(lambda: client.get_execution(handle.trace_id).status == "running",
             what="the execution to run")
    assert handle.cancel().status == "cancelled"
    final = handle.wait(poll_interval=0.05, timeout=10)
    assert final.status == "cancelled"
    # The thread is free again at once.
    assert client.execute("echo free", language="bash", thread_id="c1").stdout == "free\n"


def test_reconnect_stream_after_seq(client: Baponi) -> None:
    handle = client.execute_webhook("echo one; echo two", language="bash")
    handle.wait(poll_interval=0.05, timeout=30)
    with client.reconnect_stream(handle.trace_id) as stream:
        everything = list(stream)
    with client.reconnect_stream(handle.trace_id, after_seq=1) as stream:
        rest = list(stream)
    assert everything[-1].type == "result"
    assert [e.seq for e in rest] == [e.seq for e in everything[1:]]


def test_thread_keeps_files(client: Baponi) -> None:
    client.execute("open('notes.txt', 'w').write('remember me')", thread_id="files")
    result = client.execute("print(open('notes.txt').read())", thread_id="files")
    assert result.stdout == "remember me\n"
    other = client.execute("import os; print(os.path.exists('notes.txt'))", thread_id="other")
    assert other.stdout == "False\n"


def _wheel(name: str, version: str, module_source: str) -> bytes:
    """A minimal pure-Python wheel, built by hand (the box has no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, text in {**files, f"{dist}/RECORD": record}.items():
            zf.writestr(path, text)
    return buf.getvalue()


def test_pip_user_install_persists_in_thread(client: Baponi) -> None:
    wheel = base64.b64encode(_wheel("sophonprobe", "1.0", "ANSWER = 42\n")).decode()
    write = (f"import base64; open('sophonprobe-1.0-py3-none-any.whl','wb')"
             f".write(base64.b64decode('{wheel}'))")
    client.execute(write, thread_id="pip")
    install = client.execute(
        "python3 -m pip install --user --no-index sophonprobe-1.0-py3-none-any.whl",
        language="bash", thread_id="pip", timeout=120,
    )
    assert install.success, install.stderr
    result = client.execute("import sophonprobe; print(sophonprobe.ANSWER)", thread_id="pip")
    assert result.stdout == "42\n", result.stderr


def test_busy_thread_is_409(client: Baponi, server: LiveServer, api_key: str) -> None:
    handle = client.execute_webhook("sleep 30", language="bash", thread_id="busy")
    try:
        wait_for(lambda: client.get_execution(handle.trace_id).status == "running",
                 what="the first execution to run")
        with pytest.raises(ThreadBusyError):
            client.execute("echo hi", language="bash", thread_id="busy")
    finally:
        handle.cancel()


def test_threads_belong_to_their_user(server: LiveServer, client: Baponi) -> None:
    client.execute("open('mine.txt','w').write('alice')", thread_id="shared-name")
    with Baponi(api_key=server.add_user(), base_url=server.url, max_retries=0) as bob:
        seen = bob.execute("import os; print(os.listdir('.'))", thread_id="shared-name")
    assert seen.stdout == "[]\n"


def test_bad_key_is_401(server: LiveServer) -> None:
    with (Baponi(api_key="sk-sophon-wrong", base_url=server.url, max_retries=0) as c,
          pytest.raises(AuthenticationError)):
        c.execute("print(1)")
    r = httpx.post(server.url + "/v1/sandbox/execute", json={"code": "print(1)"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_bad_input_is_400(client: Baponi, server: LiveServer, api_key: str) -> None:
    # The client validates most input itself; the server must too, for other clients.
    with pytest.raises(APIValidationError) as info:
        client.execute("print(1)", env_vars={"MY_VAR": "ok", "SOPHON_X": "no"})
    assert info.value.error_type == "invalid_request"
    headers = {"Authorization": f"Bearer {api_key}"}
    url = server.url + "/v1/sandbox/execute"
    for body, needle in [
        ({"code": "x", "language": "cobol"}, "language"),
        ({"code": "x", "timeout": 0}, "timeout"),
        ({"code": "x", "timeout": 3601}, "timeout"),
        ({"code": ""}, "code"),
        ({"code": "x", "thread_id": "../etc"}, "thread_id"),
        ({}, "code"),
    ]:
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 400, body
        assert r.json()["error"] == "invalid_request"
        assert needle in r.json()["message"]
    r = httpx.post(url, content=b"{not json", headers=headers)
    assert r.status_code == 400 and "JSON" in r.json()["message"]


def test_timeout(client: Baponi) -> None:
    result = client.execute("echo before; sleep 30", language="bash", timeout=1)
    assert result.error == "timeout" and not result.success
    assert result.stdout == "before\n"


def test_memory_limit(client: Baponi) -> None:
    result = client.execute("x = bytearray(2 * 1024**3)\nprint('survived')")
    assert result.error == "memory_limit_exceeded"
    assert "survived" not in result.stdout
    assert client.execute("print('still fine')").stdout == "still fine\n"


def test_output_is_capped_and_flagged(client: Baponi) -> None:
    with client.execute_stream("yes | head -c 3000000", language="bash") as stream:
        for _ in stream:
            pass
        last = stream.get_final_result()
    assert len(last.stdout) == 1024 * 1024
    with client.execute_stream("yes | head -c 3000000", language="bash") as stream:
        final_event = list(stream)[-1]
    assert isinstance(final_event, ResultEvent) and final_event.output_truncated


def test_concurrent_threads_run_in_parallel(client: Baponi) -> None:
    results: dict[str, str] = {}

    def run(name: str) -> None:
        results[name] = client.execute("sleep 0.5; echo $0", language="bash",
                                       thread_id=name).stdout

    threads = [threading.Thread(target=run, args=(f"par{i}",)) for i in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    assert time.monotonic() - started < 1.8  # one after another would take 2 s or more
