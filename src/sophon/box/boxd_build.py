"""boxd, the box's first process, is a Go program (box/boxd/): a static binary that runs
on any image's root. ``make`` builds it; a server that finds it missing or older than
its sources builds it itself, once per change, under a lock (several servers may start
at once from one checkout)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

from sophon.errors import BoxError

log = logging.getLogger(__name__)

SOURCES = Path(__file__).with_name("boxd")
BINARY = SOURCES / "boxd"
BUILD_TIMEOUT_S = 600


def _stale(binary: Path) -> bool:
    if not binary.is_file():
        return True
    built = binary.stat().st_mtime
    return any(src.stat().st_mtime > built
               for src in [*SOURCES.glob("*.go"), SOURCES / "go.mod"])


def ensure_boxd() -> Path:
    """The built binary, built now if it is missing or stale."""
    if not _stale(BINARY):
        return BINARY
    go = shutil.which("go")
    if go is None:
        raise BoxError("boxd (the sandbox's agent, a Go program) is not built and Go is not "
                       "installed: run `make` (it installs golang-go), or install golang-go "
                       f"and run `go build -o boxd .` in {SOURCES}")
    with open(SOURCES / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stale(BINARY):  # another server built it while this one waited
            return BINARY
        log.info("building boxd (Go) in %s", SOURCES)
        env = {**os.environ, "CGO_ENABLED": "0"}
        if "GOCACHE" not in env and "HOME" not in env and "XDG_CACHE_HOME" not in env:
            env["GOCACHE"] = "/tmp/sophon-go-build"
        tmp = SOURCES / f".boxd.{os.getpid()}"
        try:
            subprocess.run([go, "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "."],
                           cwd=SOURCES, env=env, check=True, capture_output=True,
                           timeout=BUILD_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            tmp.unlink(missing_ok=True)
            raise BoxError("boxd did not build: "
                           + exc.stderr.decode(errors="replace")[-2000:]) from exc
        except subprocess.TimeoutExpired as exc:
            tmp.unlink(missing_ok=True)
            raise BoxError(f"boxd's build took over {BUILD_TIMEOUT_S} s") from exc
        os.replace(tmp, BINARY)
    return BINARY
