"""The server's long-lived parts, wired together once at start-up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sophon.agent.rewind import Rewinds
from sophon.agent.service import AgentService
from sophon.box.manager import BoxManager, is_thread_box
from sophon.cluster import drain
from sophon.cluster.forward import Forwarding
from sophon.cluster.nodes import NodeRegistry
from sophon.cluster.notify import EventListener
from sophon.cluster.ownership import Ownership
from sophon.config import Settings
from sophon.egress.connectors import ConnectorService
from sophon.egress.service import Egress
from sophon.events.log import EventLog
from sophon.gateway.service import Gateway
from sophon.images.service import ImageService
from sophon.keys import Sealer, secret_key, signing_key
from sophon.quotas import Quotas
from sophon.sandbox.service import ExecutionService
from sophon.sessions.checkpoints import Checkpoints
from sophon.sessions.secrets import SecretStore
from sophon.sessions.service import SessionService, box_id_of, session_id_of
from sophon.sessions.terminals import Terminals
from sophon.sessions.workspace import Workspace
from sophon.store.db import make_data_files_private, make_engine, migrate, sessionmaker
from sophon.users import UserService
from sophon.volumes.service import VolumeService
from sophon.webhooks import Webhooks

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    users: UserService
    boxes: BoxManager
    executions: ExecutionService
    sessions: SessionService
    workspace: Workspace
    gateway: Gateway
    agent: AgentService
    connectors: ConnectorService
    egress: Egress
    terminals: Terminals
    checkpoints: Checkpoints
    rewinds: Rewinds
    images: ImageService
    nodes: NodeRegistry
    ownership: Ownership
    listener: EventListener | None = None
    forwarding: Forwarding | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        make_data_files_private(settings.data_dir)
        engine = make_engine(settings.resolved_database_url)
        await migrate(engine)
        db = sessionmaker(engine)
        boxes = BoxManager(settings)
        quotas = Quotas(settings, boxes, db)  # per-user limits, shared by both services
        volumes = VolumeService(settings, db, boxes, quotas)
        webhooks = Webhooks(settings, db)  # every outbound webhook, execution or approval
        executions = ExecutionService(boxes, db, engine, quotas, volumes, webhooks)
        # This server as a node of the database's cluster (the only one on SQLite); on
        # PostgreSQL, what other nodes append reaches the streams open here, and each
        # session runs on one node, which the others forward its requests to.
        nodes = NodeRegistry(settings, db, lambda: len(boxes.awake()))
        await nodes.start()
        ownership = Ownership(settings, db, nodes)
        if ownership.clustered:
            executions.node_id = nodes.id
            executions.ownership = ownership
        cut_off = await executions.recover()
        if cut_off:
            log.warning("%d execution(s) were cut off by the last stop; marked failed", cut_off)
        events = EventLog(engine)
        events.on_append = quotas.note_event
        events.node_id = nodes.id
        listener = None
        if engine.url.get_backend_name() == "postgresql":
            listener = EventListener(engine.url, nodes.id, events.appended_elsewhere,
                                     events.look_again)
            listener.start()
        key = secret_key(settings.data_dir)
        connectors = ConnectorService(db, Sealer(key))
        sessions = SessionService(settings, db, boxes, events, SecretStore(db, key), quotas,
                                  webhooks)
        sessions.ownership = ownership
        gateway = Gateway(settings.models, db, events, token_key=key)
        # The one way out of every box, wired before any box starts.
        egress = Egress(settings, db, events, connectors, boxes, gateway.box_token, key,
                        sessions)
        sessions.check_network = egress.check_session
        sessions.door_env = egress.session_env
        sessions.check_reachable = egress.check_reachable
        sessions.connector_values = egress.connector_values
        sessions.claude_code_missing = lambda: (
            egress.claude_code if egress.claude_code.startswith("missing") else None)
        gateway.box_owner = boxes.owner_of
        gateway.connector_key = egress.connector_key
        executions.door_env = egress.execution_env
        executions.threads.network_usage = egress.usage
        # Users' images, built in build boxes whose steps go out through the door.
        images = ImageService(settings, db, boxes, egress.build_env,
                              egress.grants.rules.check_session_rules)
        sessions.images = executions.images = images
        images.quotas = quotas
        quotas.user_images_mb = images.disk_mb
        await sessions.recover()
        await boxes.start()
        await images.recover()
        executions.threads.start()  # thread expiry, execution record pruning
        egress.start()
        if not gateway.configured:
            log.warning("no model provider key (ANTHROPIC_API_KEY): sessions work, but a "
                        "message to the agent is refused until one is set")
        checkpoints = Checkpoints(sessions)
        sessions.after_change = checkpoints.take_soon  # a save's or an exec's
        agent = AgentService(sessions, gateway, settings, checkpoints)
        forwarding = None
        if ownership.clustered:
            users = UserService(db)
            forwarding = Forwarding(ownership, key, users, signing_key(settings.data_dir))

            async def taken(session_id: str) -> None:
                await boxes.disks.adopt(box_id_of(session_id))
                await sessions.cut_off(session_id, "the node that ran it stopped")

            ownership.on_taken["session"] = taken

            async def may_start(box_id: str, take: bool) -> None:
                # Before each box start, against the database: a session's or thread's
                # box starts only on the node that runs it. A request's start takes one
                # that no node runs; the node's own work after a request (a checkpoint)
                # takes nothing, so one asked before a drain released it starts nothing.
                if (session_id := session_id_of(box_id)) is not None:
                    await ownership.hold("session", session_id, take)
                elif is_thread_box(box_id):
                    await ownership.hold("thread", box_id, take)

            boxes.may_start = may_start
            ownership.on_taken["thread"] = boxes.disks.adopt  # a thread's id is its box's

            async def lost(session_id: str) -> None:
                await agent.let_go(session_id)
                await sessions.let_go(session_id)

            ownership.on_lost["session"] = lost
            ownership.on_lost["thread"] = executions.let_go
            nodes.after_beat.append(ownership.check)
            nodes.after_beat.append(lambda: drain.hand_on(ownership, sessions, agent,
                                                          executions))
        return cls(settings, engine, db, UserService(db), boxes, executions, sessions,
                   Workspace(sessions), gateway, agent, connectors=connectors,
                   egress=egress, terminals=Terminals(sessions, settings.terminal_keep_seconds),
                   checkpoints=checkpoints, rewinds=Rewinds(agent, checkpoints),
                   images=images, nodes=nodes, listener=listener, ownership=ownership,
                   forwarding=forwarding)

    @property
    def quotas(self) -> Quotas:
        return self.sessions.quotas

    @property
    def volumes(self) -> VolumeService:
        return self.executions.volumes

    def begin_shutdown(self) -> None:
        """The server was told to stop: end the connections that never end by themselves
        (event streams, terminals) now, so that they close cleanly before the server's
        grace period runs out and cuts them off."""
        self.sessions.events.end_streams()
        asyncio.get_running_loop().create_task(self.terminals.close())

    async def close(self) -> None:
        await self.terminals.close()
        await self.images.close()
        await self.agent.close()
        await self.gateway.close()
        await self.sessions.close()
        await self.executions.close()
        await self.boxes.close()
        # What ran here is free for any node to take at once, not after the lease.
        await self.ownership.release_all()
        if self.forwarding is not None:
            await self.forwarding.close()
        await self.egress.close()
        if self.listener is not None:
            await self.listener.close()
        await self.nodes.close()
        await self.engine.dispose()
