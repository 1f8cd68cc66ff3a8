"""Making a built root fit for boxes runs as root on the host after a user's build
steps: a link a step left where a box mounts into is refused, never followed out of the
root."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophon.images.builder import ImageBuildFailed, finish

POINTS = (("/etc/resolv.conf", "/etc/ssl/certs/ca.pem"), ("/usr/local/lib/tools",))


def test_a_root_gets_its_mount_points_as_real_files_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").symlink_to("../run/resolv.conf")  # as Debian has it
    finish(root, POINTS)
    assert (root / "etc/resolv.conf").is_file() and not (root / "etc/resolv.conf").is_symlink()
    assert (root / "etc/ssl/certs/ca.pem").is_file()
    assert (root / "usr/local/lib/tools").is_dir()


@pytest.mark.parametrize("linked", ["etc", "etc/ssl", "usr/local"])
def test_a_step_that_links_a_directory_out_of_the_root_is_refused(tmp_path: Path,
                                                                  linked: str) -> None:
    host = tmp_path / "host"  # stands for the host's own /etc or /usr/local
    (host / "ssl" / "certs").mkdir(parents=True)
    (host / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (host / "lib" / "tools").mkdir(parents=True)
    root = tmp_path / "root"
    (root / linked).parent.mkdir(parents=True, exist_ok=True)
    (root / linked).symlink_to(host)
    with pytest.raises(ImageBuildFailed, match="is a symbolic link"):
        finish(root, POINTS)
    assert (host / "resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert sorted(p.name for p in host.rglob("*")) == ["certs", "lib", "resolv.conf", "ssl",
                                                       "tools"]
