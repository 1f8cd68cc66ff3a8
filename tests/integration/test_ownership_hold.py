"""A node's own work after a request (a checkpoint) runs only on what the node holds now.

A drained node releases a session in the database and stops its box; the node a request
then goes to takes it. A checkpoint the drained node had still to take (the one after
an exec) used to take the session back through ``hold``, and the other node's request
failed with ``runs_on_another_node`` (CI of c1e99de and of aa85b44). With ``take=False``
it is refused instead, and the database keeps what the drain wrote.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from sophon.cluster.nodes import NodeRegistry
from sophon.cluster.ownership import Ownership, SessionElsewhere
from sophon.config import Settings
from sophon.store.db import make_engine, migrate, sessionmaker
from sophon.store.tables import Thread
from sophon.users import UserService
from tests.integration.postgres_support import NEEDS_POSTGRES

pytestmark = NEEDS_POSTGRES


async def test_a_released_one_is_taken_by_a_request_but_never_by_the_nodes_own_work(
        postgres_url: str, data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, database_url=postgres_url,
                        node_url="http://127.0.0.1:9")
    engine = make_engine(postgres_url)
    await migrate(engine)
    db = sessionmaker(engine)
    nodes = NodeRegistry(settings, db, lambda: 0)
    await nodes.start()
    try:
        ownership = Ownership(settings, db, nodes)
        assert ownership.clustered
        user, _ = await UserService(db).create("owner")
        async with db() as s:
            s.add(Thread(id="t_held", user_id=user.user_id, name="held", node_id=None))
            await s.commit()

        async def node_of() -> str | None:
            async with db() as s:
                return await s.scalar(select(Thread.node_id).where(Thread.id == "t_held"))

        # Released (no node runs it): the node's own work is refused and takes nothing.
        with pytest.raises(SessionElsewhere):
            await ownership.hold("thread", "t_held", take=False)
        assert await node_of() is None
        # A request takes it; from then on the node's own work runs on it too.
        await ownership.hold("thread", "t_held")
        assert await node_of() == nodes.id
        await ownership.hold("thread", "t_held", take=False)
        # Handed on again (a drain): refused again, and still released.
        await ownership.release("thread", "t_held")
        with pytest.raises(SessionElsewhere):
            await ownership.hold("thread", "t_held", take=False)
        assert await node_of() is None
    finally:
        await nodes.close()
        await engine.dispose()
