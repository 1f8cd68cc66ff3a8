"""A volume's sub-path never follows a symlink the workload made: a link to the host's
/etc (or through a linked directory) named as a sub-path is a 400 that says which part
is a link, never a mount of what it points to; a file is refused too. The control: the
real directory mounts like any sub-path."""

from __future__ import annotations

import httpx
from baponi import Baponi

from tests.conftest import LiveServer
from tests.integration.test_volumes import new_volume, sh, thread


def test_sub_paths_do_not_follow_symlinks(server: LiveServer, api_key: str) -> None:
    key = api_key
    with Baponi(api_key=key, base_url=server.url, max_retries=0) as client:
        v = new_volume(server, key)
        sh(client, f"ln -s /etc /data/{v}/etc && ln -s / /data/{v}/root && mkdir /data/{v}/d "
                   f"&& echo f > /data/{v}/d/f", thread())
        auth = {"Authorization": f"Bearer {key}"}
        for sub, code, says in (("etc", "sub_path_is_symlink", "'etc' is a symbolic link"),
                                ("root/etc", "sub_path_is_symlink", "'root' is a symbolic link"),
                                ("d/f", "sub_path_not_a_directory", "'f' is a file")):
            res = httpx.post(f"{server.url}/v1/sandbox/execute", headers=auth, json={
                "code": "ls /data/*/*", "language": "bash", "sub_paths": [f"/data/{v}/{sub}"]})
            assert res.status_code == 400, res.text
            assert res.json()["error"] == code and says in res.json()["message"], res.text
            assert "passwd" not in res.text
        # Control: the directory itself is a sub-path like any other.
        assert sh(client, f"cat /data/{v}/d/f", sub_paths=[f"/data/{v}/d"]) == "f\n"
