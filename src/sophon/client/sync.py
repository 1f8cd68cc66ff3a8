"""``sophon.Client``: the synchronous SDK. Every route of the API, typed."""

from __future__ import annotations

from typing import Any

from sophon.client._raw import RawClient
from sophon.events.types import from_wire
from sophon.sandbox.models import SandboxResult
from sophon.sessions.models import FileContent, FileTree, SessionView


class Client(RawClient):
    """Talks to a Sophon server. The methods and arguments of ``RawClient``; answers are
    typed: a session is a ``SessionView``, an event one of the models of
    ``sophon.events.types``, a tree a ``FileTree``, a file a ``FileContent``, an
    execution's result a ``SandboxResult``. The rest (usage, approvals, ...) are dicts.

    >>> client = Client()  # SOPHON_URL / SOPHON_API_KEY, or `sophon login`'s config
    >>> session = client.create_session("demo", template="python", base="python")
    """

    def __enter__(self) -> Client:
        return self

    def _as_session(self, data: dict[str, Any]) -> SessionView:
        return SessionView.model_validate(data)

    def _as_event(self, data: dict[str, Any]) -> Any:
        return from_wire(data)

    def _as_tree(self, data: dict[str, Any]) -> FileTree:
        return FileTree.model_validate(data)

    def _as_file(self, data: dict[str, Any]) -> FileContent:
        return FileContent.model_validate(data)

    def _as_result(self, data: dict[str, Any]) -> SandboxResult:
        return SandboxResult.model_validate(data)
