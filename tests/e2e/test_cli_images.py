"""`sophon images`, an admin's command on the data directory, as typed in a terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sophon.config import Settings
from sophon.images.definitions import BUILTIN
from tests.e2e.cli_support import assert_one_line_error, sophon

SHARED = str(Settings().images_dir)


def test_list_shows_each_base_and_why_one_is_unavailable(tmp_path: Path) -> None:
    env = {**os.environ, "SOPHON_DATA_DIR": str(tmp_path), "SOPHON_IMAGES_DIR": SHARED}
    r = sophon(env, "images", "list")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert r.stdout.split()[:6] == ["IMAGE", "STATUS", "DIGEST", "SIZE", "BUILT", "WHAT"]
    assert set(rows) == set(BUILTIN)
    assert "unavailable" in rows["dotnet"] and "no .NET SDK" in rows["dotnet"]
    assert BUILTIN["python"].digest[:12] in rows["python"]


def test_rm_refuses_an_image_a_box_uses_and_an_unknown_name(tmp_path: Path) -> None:
    images = tmp_path / "images"
    digest = BUILTIN["python"].digest
    (images / digest).mkdir(parents=True)
    (images / digest / "image.json").write_text(json.dumps({"name": "python"}))
    (tmp_path / "boxes" / "s0123").mkdir(parents=True)
    (tmp_path / "boxes" / "s0123" / "image").write_text(digest)
    env = {**os.environ, "SOPHON_DATA_DIR": str(tmp_path), "SOPHON_IMAGES_DIR": str(images)}
    assert_one_line_error(sophon(env, "images", "rm", "python"),
                          "'python' is used by 1 box(es) (s0123)")
    assert (images / digest / "image.json").exists()
    assert_one_line_error(sophon(env, "images", "rm", "ubuntu"), "unknown image 'ubuntu'")
    (tmp_path / "boxes" / "s0123" / "image").unlink()
    r = sophon(env, "images", "rm", "python")
    assert (r.returncode, r.stdout) == (0, "deleted image python\n"), r.stderr
    assert not (images / digest).exists()
