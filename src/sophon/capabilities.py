"""What this server can do, so that clients offer only that: the bases whose toolchains
the host has, the runtimes (claude-code only with the CLI installed), the models, the
network modes and the limits a session may ask for. Each thing it cannot offer says why.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from sophon.config import Settings
from sophon.egress.policy import BASE_ALLOW
from sophon.images import sizing
from sophon.images.store import ImageStore
from sophon.sessions.profiles import PROFILES, describe


class BaseCapability(BaseModel):
    name: str
    description: str
    available: bool
    reason: str | None = Field(None, description="Why it is not available")
    network: list[str] = Field(description="Hosts its sessions reach without asking")
    limits: dict[str, int | float] = Field(default_factory=dict, description=(
        "What its sessions' boxes get unless they ask otherwise: memory_mb, cpus, pids, "
        "disk_mb"))


class RuntimeCapability(BaseModel):
    name: str
    available: bool
    reason: str | None = None


class ModelCapability(BaseModel):
    name: str = Field(description="What a session's `model` may say")
    id: str = Field(description="The model it calls")


class Limits(BaseModel):
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int = Field(description="A session's disk unless it asks for more")
    disk_max_mb: int = Field(description="The most a session may ask for (`disk_mb`)")
    memory_max_mb: int = Field(0, description="The most a session may ask for "
                                              "(`limits.memory_mb`)")
    cpus_max: float = Field(0, description="... for `limits.cpus`")
    pids_max: int = Field(0, description="... for `limits.pids`")


class Capabilities(BaseModel):
    bases: list[BaseCapability]
    runtimes: list[RuntimeCapability]
    models: list[ModelCapability]
    network_ask: bool = Field(True, description="A session may ask for hosts off its list "
                                                "(network.ask)")
    execute_network: str = Field(description="The execution API's threads: registries, "
                                             "public or off (SOPHON_EGRESS_EXECUTE)")
    limits: Limits


def capabilities(settings: Settings, claude_code_missing: str | None,
                 images: ImageStore | None) -> Capabilities:
    bases = []
    for name in PROFILES:
        description, reason = describe(name, images)
        bases.append(BaseCapability(
            name=name, description=description, available=reason is None, reason=reason,
            network=list(BASE_ALLOW.get(name, ())),
            limits=sizing.defaults(settings, name).as_dict()))
    runtimes = [
        RuntimeCapability(name="native", available=True),
        RuntimeCapability(name="claude-code", available=claude_code_missing is None,
                          reason=claude_code_missing),
    ]
    models = [ModelCapability(name=alias, id=model)
              for alias, model in settings.models.model_aliases.items()]
    limits, top = settings.limits, sizing.ceilings(settings)
    return Capabilities(
        bases=bases, runtimes=runtimes, models=models,
        execute_network=settings.egress_execute,
        limits=Limits(memory_mb=limits.memory_mb, cpus=limits.cpus, pids=limits.pids,
                      disk_mb=settings.box_disk_mb, disk_max_mb=top.disk_mb,
                      memory_max_mb=top.memory_mb, cpus_max=top.cpus, pids_max=top.pids))
