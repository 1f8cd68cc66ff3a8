"""Volumes: a user's named storage at /data/<name>/ in all of that user's boxes, the
files API with source "volume", and sub_paths, with the official client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from baponi import Baponi
from baponi.exceptions import BaponiError

from tests.conftest import LiveServer


@pytest.fixture
def key(server: LiveServer) -> str:
    return server.add_user()


@pytest.fixture
def client(server: LiveServer, key: str) -> Iterator[Baponi]:
    with Baponi(api_key=key, base_url=server.url, max_retries=0) as c:
        yield c


def new_volume(server: LiveServer, key: str, **extra: object) -> str:
    name = "vol-" + uuid.uuid4().hex[:8]
    res = httpx.post(f"{server.url}/v1/volumes", json={"name": name, **extra},
                     headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert res.status_code == 201, res.text
    assert res.json()["mount_path"] == f"/data/{name}/"
    return name


def thread() -> str:
    return "vt-" + uuid.uuid4().hex[:8]


def sh(client: Baponi, code: str, t: str | None = None, **kw: object) -> str:
    res = client.execute(code, language="bash", thread_id=t, **kw)
    assert res.success, res.stderr
    return res.stdout


def test_a_volume_is_shared_by_the_threads_of_its_user(client: Baponi, server: LiveServer,
                                                       key: str) -> None:
    v = new_volume(server, key)
    t1, t2 = thread(), thread()
    sh(client, f"mkdir -p /data/{v}/d && echo one > /data/{v}/d/a.txt", t1)
    # Another thread (its own box and host uid) reads it, and can change and add files.
    assert sh(client, f"cat /data/{v}/d/a.txt && echo two >> /data/{v}/d/a.txt && "
                      f"echo b > /data/{v}/d/b.txt", t2) == "one\n"
    assert sh(client, f"cat /data/{v}/d/a.txt /data/{v}/d/b.txt && touch /data/{v}/d/c",
              t1) == "one\ntwo\nb\n"
    # A one-off execution sees it too.
    assert sh(client, f"ls /data/{v}/d") == "a.txt\nb.txt\nc\n"


def test_another_user_neither_sees_nor_addresses_a_volume(
        client: Baponi, server: LiveServer, key: str) -> None:
    v = new_volume(server, key)
    sh(client, f"echo private > /data/{v}/secret.txt", thread())
    with Baponi(api_key=server.add_user(), base_url=server.url, max_retries=0) as other:
        assert sh(other, "ls /data 2>&1; true", thread()) .find(v) == -1
        for ask in (lambda: other.download_url(path="secret.txt", source="volume", id=v),
                    lambda: other.list_files(source="volume", id=v),
                    lambda: other.upload_url(path="x", content_length=1, source="volume",
                                             id=v)):
            with pytest.raises(BaponiError) as err:
                ask()
            assert err.value.status_code == 404
        # sub_paths cannot reach it either.
        with pytest.raises(BaponiError) as err:
            other.execute("ls", language="bash", sub_paths=[f"/data/{v}/"])
        assert err.value.status_code == 400


def test_files_api_with_source_volume(client: Baponi, server: LiveServer, key: str) -> None:
    v = new_volume(server, key)
    up = client.upload_url(path="in/data.csv", content_length=4, source="volume", id=v)
    assert httpx.put(up.url, content=b"a,b\n", headers={h.name: h.value for h in up.headers},
                     timeout=30).status_code == 200
    assert sh(client, f"cat /data/{v}/in/data.csv && echo out > /data/{v}/out.txt",
              thread()) == "a,b\n"
    assert sorted(f.path for f in client.list_files(source="volume", id=v)) == [
        "in/data.csv", "out.txt"]
    down = client.download_url(path="out.txt", source="volume", id=v)
    assert httpx.get(down.url, timeout=30).content == b"out\n"
    with pytest.raises(BaponiError) as err:
        client.download_url(path="../x", source="volume", id=v)
    assert err.value.status_code == 400


def test_sub_paths_limit_what_an_execution_sees(client: Baponi, server: LiveServer,
                                                key: str) -> None:
    v, w = new_volume(server, key), new_volume(server, key)
    t = thread()
    sh(client, f"mkdir -p /data/{v}/a /data/{v}/b && echo A > /data/{v}/a/f && "
               f"echo B > /data/{v}/b/f && echo W > /data/{w}/f", t)
    seen = sh(client, f"cat /data/{v}/a/f; ls /data; ls /data/{v}; cat /data/{v}/b/f 2>&1 "
                      f"|| echo nob; echo new > /data/{v}/a/g", t, sub_paths=[f"/data/{v}/a"])
    assert seen == f"A\n{v}\na\nnob\n" or seen.startswith(f"A\n{v}\na\n")
    assert "B\n" not in seen and w not in seen
    # Without sub_paths the same thread sees everything again, including what it wrote.
    assert sh(client, f"cat /data/{v}/a/g /data/{v}/b/f /data/{w}/f", t) == "new\nB\nW\n"
    # A sub-path that does not exist yet is made; one of no such volume is a 400.
    assert sh(client, f"ls -a /data/{v}/new/dir", None,
              sub_paths=[f"/data/{v}/new/dir"]) == ".\n..\n"
    with pytest.raises(BaponiError) as err:
        client.execute("ls", language="bash", sub_paths=["/data/no-such-volume/x"])
    assert err.value.status_code == 400
    # The client refuses '..' itself; the server does too.
    res = httpx.post(f"{server.url}/v1/sandbox/execute", headers={
        "Authorization": f"Bearer {key}"}, json={"code": "ls", "language": "bash",
                                                 "sub_paths": [f"/data/{v}/../x"]})
    assert res.status_code == 400


def test_listing_and_deleting_a_volume(client: Baponi, server: LiveServer, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    v = new_volume(server, key, size_mb=64)
    again = httpx.post(f"{server.url}/v1/volumes", json={"name": v}, headers=auth)
    assert again.status_code == 409
    t = thread()
    sh(client, f"echo x > /data/{v}/f", t)
    listed = httpx.get(f"{server.url}/v1/volumes", headers=auth).json()["volumes"]
    assert [(x["name"], x["size_mb"]) for x in listed] == [(v, 64)]
    assert httpx.delete(f"{server.url}/v1/volumes/{v}", headers=auth).status_code == 204
    assert httpx.delete(f"{server.url}/v1/volumes/{v}", headers=auth).status_code == 404
    assert httpx.get(f"{server.url}/v1/volumes", headers=auth).json()["volumes"] == []
    assert sh(client, "ls /data 2>&1; true", t).find(v) == -1
    # A new volume of the same name starts empty.
    new_volume_named = httpx.post(f"{server.url}/v1/volumes", json={"name": v}, headers=auth)
    assert new_volume_named.status_code == 201
    assert sh(client, f"ls -A /data/{v}", t) == ""


def test_a_volume_has_its_own_quota(client: Baponi, server: LiveServer, key: str) -> None:
    v = new_volume(server, key, size_mb=16)
    res = client.execute(f"head -c 40M /dev/zero > /data/{v}/big", language="bash",
                         thread_id=thread())
    assert not res.success and "No space left" in res.stderr
    listed = httpx.get(f"{server.url}/v1/volumes",
                       headers={"Authorization": f"Bearer {key}"}).json()["volumes"]
    assert listed[0]["size_mb"] == 16 and 10 * 2**20 < listed[0]["used_bytes"] <= 16 * 2**20
    too_big = httpx.post(f"{server.url}/v1/volumes", json={"name": "x" + v, "size_mb": 10**6},
                         headers={"Authorization": f"Bearer {key}"})
    assert too_big.status_code == 400
