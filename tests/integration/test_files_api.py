"""The Baponi files API (thread source) and /home/baponi, with the official client."""

from __future__ import annotations

import hashlib
import time
import uuid

import httpx
import pytest
from baponi import Baponi
from baponi.exceptions import BaponiError

from sophon.keys import signing_key
from sophon.sandbox.files import Grant, sign, verify
from tests.conftest import LiveServer


@pytest.fixture
def client(server: LiveServer):
    with Baponi(api_key=server.add_user(), base_url=server.url, max_retries=0) as c:
        yield c


def thread() -> str:
    return "files-" + uuid.uuid4().hex[:8]


def headers(signed) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {h.name: h.value for h in signed.headers}


def upload(client: Baponi, t: str, path: str, data: bytes) -> httpx.Response:
    up = client.upload_url(path=path, content_length=len(data), source="thread", id=t)
    assert up.method == "PUT"
    return httpx.put(up.url, content=data, headers=headers(up), timeout=60)


def download(client: Baponi, t: str, path: str) -> httpx.Response:
    down = client.download_url(path=path, source="thread", id=t)
    assert down.method == "GET"
    return httpx.get(down.url, headers=headers(down), timeout=60)


def sh(client: Baponi, t: str, code: str) -> str:
    res = client.execute(code, language="bash", thread_id=t)
    assert res.success, res.stderr
    return res.stdout


def test_upload_list_download_round_trip_seen_at_home_baponi(client: Baponi) -> None:
    t = thread()
    assert upload(client, t, "docs/in.txt", b"hello\n").status_code == 200
    assert download(client, t, "docs/in.txt").content == b"hello\n"
    listed = {f.path: f for f in client.list_files(source="thread", id=t)}
    assert listed["docs/in.txt"].size == 6 and listed["docs/in.txt"].modified
    assert [f.path for f in client.list_files(source="thread", id=t, path="docs")] == [
        "docs/in.txt"]
    # The Deep Agents backend runs every command as `cd /home/baponi && ...`.
    assert sh(client, t, "cd /home/baponi && ls docs && cat docs/in.txt") == "in.txt\nhello\n"
    # An execute's files come back through the API, and ~ is the same directory.
    sh(client, t, "printf made > /home/baponi/made.txt && printf home > ~/home.txt")
    assert download(client, t, "made.txt").content == b"made"
    assert download(client, t, "home.txt").content == b"home"
    # An empty file, and a replaced one.
    assert upload(client, t, "empty", b"").status_code == 200
    assert upload(client, t, "made.txt", b"again").status_code == 200
    assert sh(client, t, "wc -c < ~/empty; cat /home/baponi/made.txt") == "0\nagain"
    assert download(client, t, "missing.txt").status_code == 404
    assert upload(client, t, "docs", b"x").status_code == 400  # a directory


def test_large_upload_and_download_stream_past_the_body_limit(client: Baponi) -> None:
    t = thread()
    data = bytes(range(256)) * (8 * 4096 + 3)  # ~8 MiB, over the 4 MiB JSON limit
    assert upload(client, t, "big.bin", data).status_code == 200
    want = hashlib.sha256(data).hexdigest()
    assert sh(client, t, "sha256sum /home/baponi/big.bin").split()[0] == want
    got = download(client, t, "big.bin")
    assert got.headers["content-length"] == str(len(data))
    assert hashlib.sha256(got.content).hexdigest() == want


def test_upload_must_be_exactly_the_signed_length(client: Baponi) -> None:
    t = thread()
    up = client.upload_url(path="x.txt", content_length=5, source="thread", id=t)
    assert httpx.put(up.url, content=b"toolong", headers=headers(up)).status_code in (400, 413)
    assert httpx.put(up.url, content=b"abc", headers=headers(up)).status_code == 400
    assert client.list_files(source="thread", id=t) == []


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "/home/baponi/x"])
def test_paths_leaving_the_root_are_refused(client: Baponi, path: str) -> None:
    t = thread()
    sh(client, t, "true")
    for ask in (lambda: client.upload_url(path=path, content_length=1, source="thread", id=t),
                lambda: client.download_url(path=path, source="thread", id=t)):
        with pytest.raises(BaponiError) as err:
            ask()
        assert err.value.status_code == 400


def test_symlinks_out_of_the_root_are_not_followed(client: Baponi) -> None:
    t = thread()
    sh(client, t, "mkdir -p /tmp/out && echo secret > /tmp/out/s.txt && "
                  "ln -s /tmp/out /home/baponi/dir && ln -s /etc/passwd /home/baponi/pw")
    for path in ("pw", "dir/s.txt"):
        assert download(client, t, path).status_code == 400
        assert upload(client, t, path, b"x").status_code == 400
    assert sh(client, t, "cat /tmp/out/s.txt") == "secret\n"
    assert [f.path for f in client.list_files(source="thread", id=t)] == []


def test_another_users_thread_is_not_found(server: LiveServer, client: Baponi) -> None:
    t = thread()
    assert upload(client, t, "mine.txt", b"private").status_code == 200
    with Baponi(api_key=server.add_user(), base_url=server.url, max_retries=0) as other:
        for ask in (lambda: other.download_url(path="mine.txt", source="thread", id=t),
                    lambda: other.list_files(source="thread", id=t)):
            with pytest.raises(BaponiError) as err:
                ask()
            assert err.value.status_code == 404
        # Uploading to the same name makes the other user's own thread, not theirs.
        assert upload(other, t, "theirs.txt", b"x").status_code == 200
        assert [f.path for f in other.list_files(source="thread", id=t)] == ["theirs.txt"]
    assert [f.path for f in client.list_files(source="thread", id=t)] == ["mine.txt"]


def test_tampered_expired_and_wrong_method_urls_are_refused(
        server: LiveServer, client: Baponi) -> None:
    t = thread()
    assert upload(client, t, "f.txt", b"data").status_code == 200
    down = client.download_url(path="f.txt", source="thread", id=t)
    base, token = down.url.rsplit("/", 1)
    key = signing_key(server.data_dir)
    assert (server.data_dir / "files.key").stat().st_mode & 0o077 == 0
    grant = verify(key, token, "GET")
    other_path = sign(b"\0" * 32, Grant(grant.user_id, grant.box_id, "g.txt", "GET", 0,
                                        grant.expires))
    forged = token.split(".")[0][:-2] + "AA." + token.split(".")[1]
    expired = sign(key, Grant(grant.user_id, grant.box_id, "f.txt", "GET", 0,
                              int(time.time()) - 1))
    for bad in (forged, other_path, expired, "%C3%A9." + token.split(".")[1]):
        res = httpx.get(f"{base}/{bad}")
        assert res.status_code == 403
        assert set(res.json()) == {"error", "message"}
    # A download URL cannot upload, and an upload URL cannot download.
    assert httpx.put(down.url, content=b"evil").status_code in (403, 405)
    up = client.upload_url(path="f.txt", content_length=4, source="thread", id=t)
    assert httpx.get(up.url).status_code == 403
    assert httpx.get(down.url).content == b"data"


def test_home_baponi_keeps_uploads_across_a_restart(own_server: LiveServer) -> None:
    t = thread()
    with Baponi(api_key=own_server.add_user(), base_url=own_server.url,
                max_retries=0) as cl:
        assert upload(cl, t, "kept.txt", b"kept").status_code == 200
        sh(cl, t, "mkdir -p /home/baponi/repo && echo hi > /home/baponi/repo/a.txt")
        own_server.restart()
        assert sh(cl, t, "cd /home/baponi && cat kept.txt repo/a.txt") == "kepthi\n"
        assert download(cl, t, "repo/a.txt").content == b"hi\n"


def test_sessions_and_one_off_boxes_keep_their_layout(client: Baponi) -> None:
    """/home/baponi is a thread's; /workspace and /home/user stay where they were."""
    t = thread()
    sh(client, t, "echo w > /workspace/w.txt && echo u > /home/user/u.txt")
    assert sh(client, t, "pwd; cat /workspace/w.txt /home/baponi/u.txt") == "/workspace\nw\nu\n"


def test_the_guides_multi_step_example_in_one_thread(client: Baponi) -> None:
    """Baponi's guide: clone into /home/baponi/repo, run a command there, commit; three
    executes of one thread. The 'remote' is a repository an earlier execute made there
    (tests have no internet)."""
    t = thread()
    ident = "-c user.name=t -c user.email=t@example.com"
    made = client.execute(
        "set -e; mkdir -p /home/baponi/origin && cd /home/baponi/origin && git init -q -b main"
        f" && echo 'print(6 * 7)' > app.py && git add . && git {ident} commit -qm first",
        language="bash", thread_id=t)
    assert made.success, made.stderr
    cloned = client.execute(
        "cd /home/baponi && git clone -q /home/baponi/origin repo && cd repo && python3 app.py",
        language="bash", thread_id=t)
    assert cloned.success and cloned.stdout.strip() == "42", cloned.stderr
    committed = client.execute(
        f"cd /home/baponi/repo && echo '# notes' > NOTES.md && git add . && "
        f"git {ident} commit -qm notes && git log --format=%s",
        language="bash", thread_id=t)
    assert committed.success and committed.stdout.split() == ["notes", "first"], \
        committed.stderr
