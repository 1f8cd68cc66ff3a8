"""While a rewind or a review works on a session (``AgentService.hold``), no turn starts
there: a message is a 409 saying why, and a second rewind too; a turn that runs keeps a
rewind from starting. Once the hold ends, a message goes through."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from sophon.agent.service import AgentService
from sophon.config import Settings
from sophon.errors import TurnBusy


class Events:
    async def last_of_type(self, session_id: str, event_type: str) -> int:
        return 0

    async def read_type(self, session_id: str, event_type: str) -> list[Any]:
        return []


class Sessions:
    """Just what ``send`` asks of the session service."""

    def __init__(self) -> None:
        self.events = Events()
        self.boxes = SimpleNamespace(check_room_for=lambda box_id: None)
        self.quotas = SimpleNamespace(admit_box=self._admit)
        self.ownership = None  # a server alone

    async def _admit(self, user_id: str, box_id: str) -> None:
        return None

    async def get_row(self, principal: Any, session_id: str) -> Any:
        return SimpleNamespace(id=session_id, runtime="native", box_id="s1")


def agent() -> AgentService:
    gateway = SimpleNamespace(require_key=lambda: None)
    service = AgentService(Sessions(), gateway, Settings())  # type: ignore[arg-type]
    service._start = lambda turn: None  # type: ignore[method-assign]  # no turn runs here
    return service


def test_a_message_during_a_rewind_is_refused_and_goes_through_after() -> None:
    async def scenario() -> None:
        service = agent()
        owner = SimpleNamespace(user_id="u1", name="u")
        with service.hold("ses_1", "a rewind"):
            with pytest.raises(TurnBusy, match="a rewind is in progress in this session"):
                await service.send(owner, "ses_1", "hello")  # type: ignore[arg-type]
            with pytest.raises(TurnBusy, match="a rewind is in progress"), \
                    service.hold("ses_1", "a review"):
                pass
        assert await service.send(owner, "ses_1", "hello") == {"queued": False}  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_a_running_turn_keeps_a_rewind_from_starting() -> None:
    service = agent()
    service._turns["ses_1"] = SimpleNamespace()  # type: ignore[assignment]
    with pytest.raises(TurnBusy, match="a turn is running"), service.hold("ses_1", "a rewind"):
        pass
    assert "ses_1" not in service._held
