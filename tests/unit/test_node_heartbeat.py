"""A node's heartbeat is its lease: work done after a beat (stopping boxes a node lost,
taking over a dead node's sessions, a drain) must never hold the next beat back, or a
busy node would be taken for dead by its own bookkeeping."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sophon.cluster.nodes import NodeRegistry
from sophon.config import Settings
from sophon.store.db import make_engine, migrate, sessionmaker


async def _beats_while_after_beat_is_slow(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, node_heartbeat_seconds=0.05)
    engine = make_engine(settings.resolved_database_url)
    await migrate(engine)
    nodes = NodeRegistry(settings, sessionmaker(engine), lambda: 0)
    release = asyncio.Event()
    runs = 0

    async def slow() -> None:  # as a box that takes its time to stop
        nonlocal runs
        runs += 1
        await release.wait()

    nodes.after_beat.append(slow)
    await nodes.start()
    try:
        end = time.monotonic() + 10
        while runs == 0:
            assert time.monotonic() < end, "after_beat never ran"
            await asyncio.sleep(0.01)
        [before] = await nodes.list()
        while True:
            [now] = await nodes.list()
            if now.heartbeat_at > before.heartbeat_at:
                break
            assert time.monotonic() < end, "the heartbeat waited for after_beat"
            await asyncio.sleep(0.01)
        assert runs == 1  # still the first, slow one: later beats did not pile up runs
        release.set()
        while runs < 2:  # and after it, the work runs again for the beats it missed
            assert time.monotonic() < end, "after_beat did not run again"
            await asyncio.sleep(0.01)
    finally:
        release.set()
        await nodes.close()
        await engine.dispose()


def test_a_slow_after_beat_does_not_hold_the_heartbeat(tmp_path: Path) -> None:
    asyncio.run(_beats_while_after_beat_is_slow(tmp_path))
