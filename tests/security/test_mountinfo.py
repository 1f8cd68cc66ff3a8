"""What a box's mount table tells about the host.

``/proc/self/mountinfo`` shows, for every bind mount, the source's path within its
filesystem. The server's generated files (``/etc/passwd``, boxd) are therefore copied in
by bwrap rather than bound from the data directory, and a box's own files live on a
filesystem of their own (its disk image), so neither the data directory nor the box's id
appears. What does remain visible is listed in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import os
import secrets

import httpx
import pytest

from tests.conftest import LiveServer
from tests.security.helpers import box_dir_holding, execute, thread_name

PROBE = "cat /proc/self/mountinfo; echo ===; cat /proc/self/mounts; echo ===; " \
        "cat /proc/1/mountinfo 2>&1"


@pytest.mark.skipif(os.geteuid() != 0, reason="an unprivileged server has no box disks: "
                    "its boxes' workspace binds show their host paths")
def test_mount_table_names_neither_the_data_dir_nor_the_box(
    server: LiveServer, http: httpx.Client
) -> None:
    thread = thread_name("mounts")
    token = secrets.token_hex(6)
    res = execute(http, f"echo {token} > /workspace/{token}; {PROBE}", thread_id=thread)
    assert res["exit_code"] == 0, res
    table = res["stdout"]
    box_id = box_dir_holding(server, f"workspace/{token}").name
    # Control: the probe reads the box's own mount table, where a bind shows its
    # source's path (the host's /usr is bound at /usr), and sees its own mounts.
    assert " /usr /usr " in table and " /workspace " in table, table
    # boxd's directory is one bind of a tmpfs of its own (box/agent_fs.py): its root,
    # "/", shows, and no host path.
    agent = {line for line in table.splitlines() if line.split()[4:5] == ["/opt/sophon/agent"]}
    assert len(agent) == 1, agent
    [line] = agent
    assert line.split()[3] == "/" and " - tmpfs " in line, line
    # So is its /etc (box/etc_fs.py): the server's files and the host's few, one bind.
    etc = sorted({line for line in table.splitlines() if line.split()[4:5] == ["/etc"]})
    assert len(etc) == 1 and etc[0].split()[3] == "/" and " - tmpfs " in etc[0], etc
    for secret in {str(server.data_dir), str(server.data_dir.resolve()), box_id}:
        leaked = [line for line in table.splitlines() if secret in line]
        assert not leaked, f"{secret!r} shows in the box's mount table: {leaked}"
