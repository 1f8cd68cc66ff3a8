"""What a box gets (memory, CPU, processes, disk): its image's defaults, what a session
asks for, and the admin's ceilings.

Each base has defaults (``BASE_DEFAULTS``: a Python or Node toolchain wants more memory
than a shell), which the admin changes with SOPHON_BASE_LIMITS; a base not named there
gets the server's SOPHON_BOX_* defaults. A session may ask for other values, each at
most the admin's ceiling (SOPHON_BOX_MEMORY_MAX_MB, SOPHON_BOX_CPUS_MAX,
SOPHON_BOX_PIDS_MAX, SOPHON_BOX_DISK_MAX_MB; unset, a ceiling is the largest default,
so nobody gets more than some base gets unless the admin says so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field

from sophon.config import Settings
from sophon.errors import BadRequest

FIELDS = ("memory_mb", "cpus", "pids", "disk_mb")
# Built-in bases' defaults beyond the server's (SOPHON_BASE_LIMITS overrides these).
BASE_DEFAULTS: dict[str, dict[str, float]] = {
    "python": {"memory_mb": 1024},
    "node": {"memory_mb": 1024, "pids": 512},
    "dotnet": {"memory_mb": 2048, "pids": 512},
}
_SETTING = {"memory_mb": ("SOPHON_BOX_MEMORY_MAX_MB", "MiB"),
            "cpus": ("SOPHON_BOX_CPUS_MAX", "CPUs"),
            "pids": ("SOPHON_BOX_PIDS_MAX", "processes"),
            "disk_mb": ("SOPHON_BOX_DISK_MAX_MB", "MiB")}


@dataclass(frozen=True)
class Size:
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class SizeRequest(BaseModel):
    """What a session asks for instead of its base's defaults (each within the admin's
    ceiling); a field left out is the base's default."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    memory_mb: int | None = Field(None, ge=64, le=1024 * 1024)
    cpus: float | None = Field(None, ge=0.1, le=1024)
    pids: int | None = Field(None, ge=16, le=1_000_000)


def defaults(settings: Settings, base: str | None) -> Size:
    """A base's defaults (None: a box on no image, the server's own)."""
    lim = settings.limits
    own = {**BASE_DEFAULTS.get(base or "", {}), **settings.base_limits.get(base or "", {})}
    return Size(memory_mb=int(own.get("memory_mb", lim.memory_mb)),
                cpus=float(own.get("cpus", lim.cpus)), pids=int(own.get("pids", lim.pids)),
                disk_mb=int(own.get("disk_mb", settings.box_disk_mb)))


def ceilings(settings: Settings) -> Size:
    every = [defaults(settings, b) for b in (None, *BASE_DEFAULTS, *settings.base_limits)]
    lim = settings.limits
    return Size(memory_mb=lim.memory_max_mb or max(s.memory_mb for s in every),
                cpus=lim.cpus_max or max(s.cpus for s in every),
                pids=lim.pids_max or max(s.pids for s in every),
                disk_mb=max(settings.disk_max_mb, *(s.disk_mb for s in every)))


def resolve(settings: Settings, base: str | None, asked: SizeRequest | None,
            disk_mb: int | None = None) -> Size:
    """The size of a box of ``base`` with what was asked; a 400 naming the setting for
    a value over the admin's ceiling."""
    size = defaults(settings, base).as_dict()
    wanted = {**(asked.model_dump(exclude_none=True) if asked else {}),
              **({"disk_mb": disk_mb} if disk_mb is not None else {})}
    top = ceilings(settings).as_dict()
    for name, value in wanted.items():
        if value > top[name]:
            setting, unit = _SETTING[name]
            where = "disk_mb" if name == "disk_mb" else f"limits.{name}"
            raise BadRequest(f"{where} is {value:g}, over this server's ceiling of "
                             f"{top[name]:g} {unit} a box ({setting})")
        size[name] = value
    return Size(memory_mb=int(size["memory_mb"]), cpus=float(size["cpus"]),
                pids=int(size["pids"]), disk_mb=int(size["disk_mb"]))
