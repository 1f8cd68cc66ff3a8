"""A box's size: its base's defaults (built-in, then SOPHON_BASE_LIMITS), what a
session asks for, and the admin's ceilings (unset: the largest default)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sophon.config import BoxLimits, Settings
from sophon.errors import BadRequest
from sophon.images.sizing import Size, SizeRequest, ceilings, defaults, resolve


def settings(**kw: object) -> Settings:
    kw.setdefault("limits", BoxLimits(memory_mb=512, cpus=1, pids=256))
    return Settings(box_disk_mb=2048, **kw)


def test_defaults_per_base_and_the_admins_overrides() -> None:
    s = settings()
    assert defaults(s, None) == Size(512, 1.0, 256, 2048)
    assert defaults(s, "generic") == Size(512, 1.0, 256, 2048)
    assert defaults(s, "python") == Size(1024, 1.0, 256, 2048)
    assert defaults(s, "node") == Size(1024, 1.0, 512, 2048)
    s = settings(base_limits={"python": {"memory_mb": 3072, "cpus": 2, "disk_mb": 8192}})
    assert defaults(s, "python") == Size(3072, 2.0, 256, 8192)
    # Unset ceilings are the largest default: no session gets more than some base does.
    assert ceilings(s) == Size(3072, 2.0, 512, 8192)


def test_a_session_asks_within_the_ceiling_or_is_told_which_setting() -> None:
    s = settings(limits=BoxLimits(memory_mb=512, memory_max_mb=4096, cpus_max=4))
    assert resolve(s, "generic", SizeRequest(memory_mb=4096, cpus=4), 100) == \
        Size(4096, 4.0, 256, 100)
    assert resolve(s, "python", None) == Size(1024, 1.0, 256, 2048)
    with pytest.raises(BadRequest, match=r"limits.memory_mb is 5000, over this server's "
                                         r"ceiling of 4096 MiB a box "
                                         r"\(SOPHON_BOX_MEMORY_MAX_MB\)"):
        resolve(s, "generic", SizeRequest(memory_mb=5000))
    with pytest.raises(BadRequest, match=r"disk_mb is 4096.*SOPHON_BOX_DISK_MAX_MB"):
        resolve(s, "generic", None, 4096)
    with pytest.raises(BadRequest, match="SOPHON_BOX_PIDS_MAX"):
        resolve(s, "generic", SizeRequest(pids=513))


def test_bad_requests_and_settings_are_refused() -> None:
    for bad in ({"memory_mb": "512"}, {"memory_mb": 8}, {"cpus": float("inf")},
                {"swap": 1}):
        with pytest.raises(ValidationError):
            SizeRequest.model_validate(bad)
    with pytest.raises(ValidationError, match="unknown limit"):
        Settings(base_limits={"python": {"swap_mb": 1}})
    with pytest.raises(ValidationError, match="positive"):
        Settings(base_limits={"python": {"memory_mb": 0}})
