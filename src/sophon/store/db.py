"""Engine, sessions and start-up migrations."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")
# What SQLite keeps beside a database: the write-ahead log, its index, a rollback journal.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

log = logging.getLogger(__name__)


def make_private(path: Path) -> bool:
    """Take group and other bits off a file (never following a symlink); True if it
    had any. A file this process may not chmod is left, with a warning."""
    try:
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode) or not mode & 0o077:
            return False
        os.chmod(path, stat.S_IMODE(mode) & 0o700)
    except FileNotFoundError:
        return False
    except PermissionError:
        log.warning("%s can be read by other users and this server cannot change that "
                    "(chmod go-rwx it)", path)
        return False
    return True


def make_data_files_private(data_dir: Path) -> int:
    """Every file directly in the data directory (the database and its -wal and -shm,
    secret.key, files.key) is the server's alone: repairs what an older server, or a
    hand, left readable. Directories keep their own modes: the data directory, boxes/
    and volumes/ are 0711 for box uids to walk through, runtime/ holds nothing secret.
    Returns how many files were repaired."""
    repaired = sum(make_private(data_dir / name) for name in os.listdir(data_dir))
    if repaired:
        log.info("made %d file(s) in %s readable by this server alone", repaired, data_dir)
    return repaired


def prepare_sqlite_file(url: str) -> None:
    """A SQLite database holds every execution's output and every event: only the
    server may read it. SQLite makes a new file with the process's umask (0644 as a
    rule) and gives -wal, -shm and -journal the database file's mode, so the file is
    made 0600 before SQLite opens it, and one an older server made is repaired."""
    database = make_url(url).database
    if not url.startswith("sqlite") or not database or database.startswith(":memory:") \
            or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    for p in (path, *(path.with_name(path.name + side) for side in SQLITE_SIDE_FILES)):
        make_private(p)


def make_engine(url: str) -> AsyncEngine:
    prepare_sqlite_file(url)
    engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a crash of the server process;
            # only an OS crash can lose the last transactions.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(conn: Connection) -> None:
    from alembic.runtime.migration import MigrationContext

    # Alembic's own lines (its context, each step) are noise at every start: one line of
    # ours says what changed, and only when something did.
    quiet = logging.getLogger("alembic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        before = MigrationContext.configure(conn).get_current_revision()
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    finally:
        quiet.setLevel(level)
    if after != before:
        log.info("database schema %s: %s", "created" if before is None else "upgraded",
                 after)


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)
