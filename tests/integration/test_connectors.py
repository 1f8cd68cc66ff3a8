"""Connectors: a user's credentials for the egress door, stored sealed, never shown back.

Over a real server (``POST/GET/DELETE /v1/connectors``): every type, every bad input a
clear 400 that stores nothing, names unique per user, other users' connectors out of
reach, and the value in no answer, no log line and no readable byte of the database.
The door's side (``grants``, ``execute_grants``, ``check_names``) on the service itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from sophon.egress.connectors import (
    GITHUB_HOSTS,
    ConnectorService,
    CreateConnector,
    UpdateConnector,
)
from sophon.errors import BadRequest, Conflict, NotFound
from sophon.keys import Sealer
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.users import UserService
from tests.conftest import LiveServer


def token(prefix: str = "ghp_") -> str:
    """A value no test shares with another, so finding it anywhere means it leaked."""
    return prefix + uuid.uuid4().hex + "X" * 8


def anthropic_key() -> str:
    return "sk-ant-api03-" + uuid.uuid4().hex + "_Y-Z"


def secret_header_value() -> str:
    return "Bearer s3cr3t-" + uuid.uuid4().hex


def connectors(http: httpx.Client) -> list[dict[str, Any]]:
    r = http.get("/v1/connectors")
    assert r.status_code == 200, r.text
    return list(r.json()["connectors"])


# --- every type ---------------------------------------------------------------------------


def test_each_type_is_created_and_listed_without_its_value(
        http: httpx.Client, server: LiveServer) -> None:
    gh, ant, hdr = token("github_pat_"), anthropic_key(), secret_header_value()
    bodies = [
        {"name": "gh", "type": "github", "value": gh,
         "push": ["Me/App", "me/lib:feature/*"]},
        {"name": "claude", "type": "anthropic", "value": ant, "execute": True},
        {"name": "claude-server-key", "type": "anthropic"},
        {"name": "internal-api", "type": "http", "value": hdr,
         "host": "API.Internal.Example.:8443", "header": "Authorization"},
    ]
    seen = ""
    for body in bodies:
        r = http.post("/v1/connectors", json=body)
        assert r.status_code == 201, r.text
        assert "value" not in r.json()
        seen += r.text
    listed = connectors(http)
    seen += http.get("/v1/connectors").text
    assert [(c["name"], c["type"], c["host"], c["header"], c["execute"], c["push"])
            for c in listed] == [
        ("claude", "anthropic", None, None, True, None),
        ("claude-server-key", "anthropic", None, None, False, None),
        ("gh", "github", None, None, False, ["me/app", "me/lib:feature/*"]),
        # The host in its one spelling: lower case, no trailing dot.
        ("internal-api", "http", "api.internal.example:8443", "Authorization", False, None),
    ]
    assert all(set(c) == {"name", "type", "host", "header", "execute", "keys", "push",
                          "created_at"} for c in listed)
    assert all(c["created_at"].endswith("Z") for c in listed)
    for value in (gh, ant, hdr):
        assert value not in seen
        assert value not in server.log.read_text(errors="replace")


# --- bad input ----------------------------------------------------------------------------

GH = token()
BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown type": ({"name": "x", "type": "gitlab", "value": GH},
                     "type: Input should be 'github', 'anthropic' or 'http'"),
    "no type": ({"name": "x", "value": GH}, "type: Field required"),
    "bad name": ({"name": "My_Token", "type": "github", "value": GH},
                 "name: a connector's name is lowercase letters, digits and '-'"),
    "name too long": ({"name": "a" * 64, "type": "github", "value": GH}, "at most 63"),
    "unknown field": ({"name": "x", "type": "github", "value": GH, "scope": "all"},
                      "scope: Extra inputs are not permitted"),
    "execute not a boolean": ({"name": "x", "type": "github", "value": GH,
                               "execute": "yes"}, "execute: Input should be a valid boolean"),
    "value too long": ({"name": "x", "type": "http", "host": "a.example",
                        "header": "X-Key", "value": "v" * 8193},
                       "the value is longer than 8192 bytes"),
    "github without a value": ({"name": "x", "type": "github"},
                               "a github connector needs a value"),
    "github value not a token": ({"name": "x", "type": "github", "value": "hunter2-hunter2"},
                                 "does not look like a GitHub token"),
    "github token too short": ({"name": "x", "type": "github", "value": "ghp_abc"},
                               "does not look like a GitHub token"),
    "github with a host": ({"name": "x", "type": "github", "value": GH,
                            "host": "github.example.com"},
                           "a github connector takes no host: its hosts are github.com "
                           "and api.github.com"),
    "github with a header": ({"name": "x", "type": "github", "value": GH,
                              "header": "Authorization"}, "a github connector takes no header"),
    "github push not owner/repo": ({"name": "x", "type": "github", "value": GH,
                                    "push": ["just-a-name"]},
                                   "push rule 'just-a-name' is not owner/repo"),
    "github push to a bad branch": ({"name": "x", "type": "github", "value": GH,
                                     "push": ["me/app:../main"]},
                                    "is not a branch name or glob"),
    "github push empty": ({"name": "x", "type": "github", "value": GH, "push": []},
                          "push is empty"),
    "anthropic value not a key": ({"name": "x", "type": "anthropic",
                                   "value": "sk-live-0123456789abcdefghij"},
                                  "does not look like an Anthropic key"),
    "anthropic with a host": ({"name": "x", "type": "anthropic", "host": "a.example"},
                              "an anthropic connector takes no host"),
    "push on http": ({"name": "x", "type": "http", "host": "a.example", "header": "X-Key",
                      "value": "v", "push": ["me/app"]},
                     "push is for github connectors only"),
    "http without a host": ({"name": "x", "type": "http", "header": "X-Key", "value": "v"},
                            "an http connector needs a host"),
    "http host *": ({"name": "x", "type": "http", "host": "*", "header": "X-Key",
                     "value": "v"}, "host '*' is too wide"),
    "http host a wildcard": ({"name": "x", "type": "http", "host": "*.example.com",
                              "header": "X-Key", "value": "v"},
                             "host '*.example.com' is too wide"),
    "http host a URL": ({"name": "x", "type": "http", "host": "https://api.example.com",
                         "header": "X-Key", "value": "v"}, "not a URL"),
    "http host with a path": ({"name": "x", "type": "http", "host": "api.example.com/v1",
                               "header": "X-Key", "value": "v"}, "not a URL"),
    "http host bad port": ({"name": "x", "type": "http", "host": "api.example.com:70000",
                            "header": "X-Key", "value": "v"},
                           "the port must be a number from 1 to 65535"),
    "http host not a name": ({"name": "x", "type": "http", "host": "bad..name",
                              "header": "X-Key", "value": "v"}, "is not a host name"),
    "http without a header": ({"name": "x", "type": "http", "host": "a.example",
                               "value": "v"}, "an http connector needs a header"),
    "http header not a token": ({"name": "x", "type": "http", "host": "a.example",
                                 "header": "X Key:", "value": "v"}, "is not a header name"),
    "http without a value": ({"name": "x", "type": "http", "host": "a.example",
                              "header": "X-Key"}, "an http connector needs a value"),
    **{f"http value with {what}": (
        {"name": "x", "type": "http", "host": "a.example", "header": "X-Key",
         "value": f"abc{char}Injected: yes"}, "the value holds a control character")
       for what, char in (("CR", "\r"), ("LF", "\n"), ("NUL", "\x00"))},
    "keys and execute both": ({"name": "x", "type": "anthropic", "execute": True,
                               "keys": ["0" * 32]}, "not both"),
    "keys not the caller's": ({"name": "x", "type": "anthropic", "keys": ["0" * 32]},
                              f"you have no API key with id {'0' * 32!r}"),
    "http value too short": ({"name": "x", "type": "http", "host": "a.example",
                              "header": "X-Key", "value": "short"}, "too short"),
    "http value outside ASCII": ({"name": "x", "type": "http", "host": "a.example",
                                  "header": "X-Key", "value": "clé-secrète"},
                                 "a character outside ASCII"),
    **{f"http header {name}": (
        {"name": "x", "type": "http", "host": "a.example", "header": name, "value": "v"},
        f"header {name!r} is the door's own")
       for name in ("Host", "CONTENT-LENGTH", "Transfer-Encoding", "connection",
                    "Proxy-Authorization", "Proxy-Connection", "Upgrade", "TE", "Trailer",
                    "Keep-Alive")},
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_400_and_stores_nothing(http: httpx.Client, case: str) -> None:
    body, message = BAD[case]
    r = http.post("/v1/connectors", json=body)
    assert r.status_code == 400, r.text
    got = r.json()
    assert got["error"] == "invalid_request"
    assert message in got["message"], got["message"]
    value = body.get("value")
    if isinstance(value, str) and len(value) > 8:
        assert value not in r.text  # a wrong value is not repeated back either
    assert connectors(http) == []


# --- names, deletion, other users ---------------------------------------------------------


def test_a_name_is_taken_until_its_connector_is_deleted(http: httpx.Client) -> None:
    first = {"name": "api", "type": "http", "host": "one.example", "header": "X-Key",
             "value": "first-value"}
    assert http.post("/v1/connectors", json=first).status_code == 201
    r = http.post("/v1/connectors", json={**first, "host": "two.example"})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "conflict" and "'api'" in r.json()["message"]
    assert [c["host"] for c in connectors(http)] == ["one.example"]  # the first stays

    r = http.delete("/v1/connectors/api")
    assert (r.status_code, r.content) == (204, b"")
    assert connectors(http) == []
    r = http.delete("/v1/connectors/api")
    assert r.status_code == 404 and r.json()["message"] == "no connector named 'api'"
    # The name is free again.
    r = http.post("/v1/connectors", json={**first, "host": "two.example"})
    assert r.status_code == 201, r.text
    assert [c["host"] for c in connectors(http)] == ["two.example"]


def test_another_user_neither_sees_nor_deletes_a_connector(
        http: httpx.Client, server: LiveServer) -> None:
    r = http.post("/v1/connectors", json={"name": "gh", "type": "github", "value": token()})
    assert r.status_code == 201, r.text
    with httpx.Client(base_url=server.url, timeout=30, headers={
            "Authorization": f"Bearer {server.add_user()}"}) as other:
        assert connectors(other) == []
        r = other.delete("/v1/connectors/gh")
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        # The same name is the other user's own to take.
        r = other.post("/v1/connectors", json={"name": "gh", "type": "anthropic"})
        assert r.status_code == 201, r.text
        assert [c["type"] for c in connectors(other)] == ["anthropic"]
    assert [c["type"] for c in connectors(http)] == ["github"]  # the owner's is untouched


def test_without_a_key_nothing_is_answered(server: LiveServer) -> None:
    for method, path in (("GET", "/v1/connectors"), ("POST", "/v1/connectors"),
                         ("DELETE", "/v1/connectors/gh")):
        r = httpx.request(method, server.url + path, timeout=30)
        assert r.status_code == 401, (method, path, r.text)


# --- sealed at rest -----------------------------------------------------------------------


def test_values_are_sealed_in_the_database(http: httpx.Client, server: LiveServer) -> None:
    gh, hdr = token("ghs_"), secret_header_value()
    for body in ({"name": "sealed-gh", "type": "github", "value": gh},
                 {"name": "sealed-http", "type": "http", "host": "a.example",
                  "header": "X-Key", "value": hdr}):
        assert http.post("/v1/connectors", json=body).status_code == 201
    db = server.data_dir / "sophon.db"
    # Not in any byte of the database's files (the WAL holds recent writes).
    for path in server.data_dir.glob("sophon.db*"):
        raw = path.read_bytes()
        for value in (gh, hdr):
            assert value.encode() not in raw, path
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = dict(con.execute("SELECT name, value FROM connectors WHERE name LIKE "
                                "'sealed-%'").fetchall())
    # Sealed with the server's key, like session secrets: it opens them again.
    fernet = Fernet((server.data_dir / "secret.key").read_bytes().strip())
    assert fernet.decrypt(rows["sealed-gh"]).decode() == gh
    assert fernet.decrypt(rows["sealed-http"]).decode() == hdr


# --- the door's side ----------------------------------------------------------------------


def test_grants_for_the_door(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}")
        await migrate(engine)
        db = sessionmaker(engine)
        users = UserService(db)
        a, _ = await users.create("a")
        b, _ = await users.create("b")
        service = ConnectorService(db, Sealer(Fernet.generate_key()))
        gh, hdr = token("github_pat_"), secret_header_value()
        try:
            await service.create(a, CreateConnector(
                name="gh", type="github", value=gh, push=["me/app:main"], execute=True))
            await service.create(a, CreateConnector(name="claude", type="anthropic"))
            await service.create(a, CreateConnector(
                name="api", type="http", value=hdr, host="127.0.0.2:8080",
                header="X-Api-Key"))
            with pytest.raises(Conflict):
                await service.create(a, CreateConnector(name="gh", type="anthropic"))

            got = await service.grants(a.user_id, ["api", "gh", "claude", "gone", "gh"])
            assert [(g.name, g.type, g.value, g.hosts, g.header, g.push) for g in got] == [
                ("api", "http", hdr, ("127.0.0.2:8080",), "X-Api-Key", ()),
                ("gh", "github", gh, GITHUB_HOSTS, None, ("me/app:main",)),
                ("claude", "anthropic", None, (), None, ()),
            ]
            assert GITHUB_HOSTS == ("github.com", "api.github.com")
            assert gh not in repr(got) and hdr not in repr(got)  # safe in a log line
            assert [g.name for g in await service.execute_grants(a.user_id, None)] == ["gh"]

            # Another user's names are not theirs.
            assert await service.grants(b.user_id, ["gh", "api"]) == []
            assert await service.execute_grants(b.user_id, None) == []
            with pytest.raises(BadRequest, match=r"^no connector named 'gh'; create it with "
                                                 r"POST /v1/connectors$"):
                await service.check_names(b.user_id, ["gh"])
            await service.check_names(a.user_id, ["gh", "api"])
            with pytest.raises(BadRequest, match="no connector named 'nope'"):
                await service.check_names(a.user_id, ["gh", "nope"])
            with pytest.raises(NotFound):
                await service.delete(b, "gh")

            # A change is seen at once (the cache is dropped), and a delete takes it away.
            await service.create(a, CreateConnector(name="later", type="anthropic",
                                                    execute=True))
            assert [g.name for g in await service.execute_grants(a.user_id, None)] == \
                ["gh", "later"]
            await service.delete(a, "gh")
            assert await service.grants(a.user_id, ["gh"]) == []
            assert [g.name for g in await service.execute_grants(a.user_id, None)] == ["later"]
            with pytest.raises(BadRequest):
                await service.check_names(a.user_id, ["gh"])
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_connector_for_some_keys_goes_with_their_executions_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}")
        await migrate(engine)
        db = sessionmaker(engine)
        users = UserService(db)
        a, _ = await users.create("a")
        await users.add_key("a")
        b, _ = await users.create("b")
        first, second = [k.id for k in await users.keys(a)]
        assert first == a.key_id
        service = ConnectorService(db, Sealer(Fernet.generate_key()))

        async def names(key_id: str | None) -> list[str]:
            return [g.name for g in await service.execute_grants(a.user_id, key_id)]
        try:
            view = await service.create(a, CreateConnector(name="claude", type="anthropic",
                                                           keys=[second, second]))
            assert (view.execute, view.keys) == (False, [second])
            assert await names(second) == ["claude"]
            assert await names(first) == [] and await names(None) == []
            # Another user's key, or both ways of attaching at once: a 400, nothing kept.
            with pytest.raises(BadRequest, match=f"no API key with id {b.key_id!r}"):
                await service.create(a, CreateConnector(name="x", type="anthropic",
                                                        keys=[b.key_id]))
            with pytest.raises(BadRequest, match="not both"):
                await service.create(a, CreateConnector(name="x", type="anthropic",
                                                        execute=True, keys=[first]))
            assert [c.name for c in await service.list(a)] == ["claude"]
            # Changed: seen by the next execution at once.
            await service.update(a, "claude", UpdateConnector(execute=True))
            assert await names(first) == ["claude"] and await names(None) == ["claude"]
            await service.update(a, "claude", UpdateConnector(keys=[first]))
            assert await names(first) == ["claude"] and await names(second) == []
            await service.update(a, "claude", UpdateConnector(execute=False))
            assert await names(first) == [] and (await service.list(a))[0].keys is None
            with pytest.raises(BadRequest, match="nothing to change"):
                await service.update(a, "claude", UpdateConnector())
            with pytest.raises(NotFound):
                await service.update(b, "claude", UpdateConnector(execute=True))
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_value_sealed_under_another_key_is_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'sophon.db'}")
        await migrate(engine)
        db = sessionmaker(engine)
        a, _ = await UserService(db).create("a")
        try:
            await ConnectorService(db, Sealer(Fernet.generate_key())).create(
                a, CreateConnector(name="gh", type="github", value=token()))
            await ConnectorService(db, Sealer(Fernet.generate_key())).create(
                a, CreateConnector(name="claude", type="anthropic"))
            later = ConnectorService(db, Sealer(Fernet.generate_key()))  # the key changed
            assert [g.name for g in await later.grants(a.user_id, ["claude"])] == ["claude"]
            with pytest.raises(Exception, match="connector 'gh' cannot be decrypted: the "
                                                "secret key changed"):
                await later.grants(a.user_id, ["gh"])
        finally:
            await engine.dispose()

    asyncio.run(scenario())
