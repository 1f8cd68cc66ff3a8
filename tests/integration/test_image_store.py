"""The image store with a stand-in for mmdebstrap (a real squashfs of a tiny root, really
mounted): one build however many ask, nothing half-built kept, the safety steps, and
deletion refused while boxes use an image."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sophon.box.manager import boxes_on_image
from sophon.errors import BadRequest
from sophon.images import builder
from sophon.images.builder import ImageBuildFailed
from sophon.images.definitions import BUILTIN, ImageDef
from sophon.images.store import ImageStore

POINTS = (("/etc/passwd", "/etc/sophon/ca.pem", "/etc/resolv.conf"),
          ("/usr/local/lib/sophon-claude",))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="an image is a loop mount")


@pytest.fixture
def images_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "images"
    yield d
    for mnt in d.glob("*/mnt"):  # the store never unmounts: servers share its mounts
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def mounted(path: Path) -> bool:
    return os.path.ismount(path)


def leftovers(images_dir: Path) -> list[str]:
    """What is in the images directory but the lock files."""
    return sorted(p.name for p in images_dir.iterdir() if not p.name.endswith((".lock",
                                                                                ".build")))


REAL_BUILD = builder.build


def fake_build(calls: list[str], fail: bool = False) -> Callable[..., object]:
    """mmdebstrap's part stood in for; an image unpacked from a built one is built for
    real (unsquashfs of what the stand-in made)."""
    async def build(definition: ImageDef, scratch: Path, sources: list[str], timeout: float,
                    mount_points: tuple[tuple[str, ...], tuple[str, ...]],
                    progress: Callable[[str], None], run_steps: object = None,
                    max_bytes: int | None = None, from_image: Path | None = None) -> int:
        calls.append(definition.name if from_image is None
                     else f"{definition.name} from {from_image.parent.name}")
        if from_image is not None:
            return await REAL_BUILD(definition, scratch, sources, timeout, mount_points,
                                    progress, run_steps, max_bytes, from_image)  # type: ignore[arg-type]
        (scratch / "build.log").write_text("I: downloading packages...\n")
        progress("I: downloading packages...")
        await asyncio.sleep(0.2)  # long enough for a second caller to arrive
        if fail:
            (scratch / "build.log").write_text("E: Unable to locate package nosuchpkg\n")
            raise ImageBuildFailed("the build of image 'generic' failed"
                                   f"{builder._tail(scratch)}")
        root = scratch / "root"
        (root / "usr/bin").mkdir(parents=True)
        (root / "etc").mkdir()
        (root / "var").mkdir()
        os.symlink("usr/bin", root / "bin")
        (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
        (root / "usr/bin/su").write_text("#!/bin/sh\n")
        (root / "usr/bin/su").chmod(0o4755)
        size = builder.finish(root, mount_points)
        await builder.squash(root, scratch / "image.sqfs", 60)
        return size
    return build


async def test_one_build_for_every_caller_and_a_safe_mounted_root(
        images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(builder, "build", fake_build(calls))
    store = ImageStore(images_dir, sources=[], mount_points=POINTS)
    assert [v.status for v in store.list()] == ["not built", "not built", "not built",
                                                 "unavailable"]
    first, second = await asyncio.gather(store.ensure("generic"), store.ensure("generic"))
    assert calls == ["generic"] and first == second
    definition, root = first
    assert root == images_dir / definition.digest / "mnt" and mounted(root)
    # Read-only, no setuid file, the box layer's mount points made (a real file where
    # the image had a symlink).
    with pytest.raises(OSError):
        (root / "usr/bin/new").write_text("x")
    assert not (root / "usr/bin/su").stat().st_mode & stat.S_ISUID
    assert (root / "etc/sophon/ca.pem").is_file() and (root / "etc/passwd").is_file()
    assert (root / "etc/resolv.conf").is_file() and not (root / "etc/resolv.conf").is_symlink()
    assert (root / "usr/local/lib/sophon-claude").is_dir()
    [generic] = [v for v in store.list() if v.name == "generic"]
    assert generic.status == "ready" and generic.size_bytes and generic.built_at
    # Another server on the same directory finds it built, and mounted once.
    again = ImageStore(images_dir, sources=[], mount_points=POINTS)
    assert await again.ensure("generic") == first and calls == ["generic"]


async def test_a_failed_build_leaves_nothing_and_says_why(
        images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(builder, "build", fake_build(calls, fail=True))
    store = ImageStore(images_dir, sources=[], mount_points=POINTS)
    with pytest.raises(ImageBuildFailed, match="Unable to locate package nosuchpkg"):
        await store.ensure("generic")
    # Nothing but its log, which the images API shows.
    digest = BUILTIN["generic"].digest
    assert leftovers(images_dir) == [f".{digest}.failed.log"]
    failed = store.log_path(digest)
    assert failed is not None and "nosuchpkg" in failed.read_text()
    # The next need tries again; its log replaces the failed one.
    monkeypatch.setattr(builder, "build", fake_build(calls))
    await store.ensure("generic")
    assert calls == ["generic", "generic"]
    assert leftovers(images_dir) == [digest]


async def test_unknown_unavailable_and_used_images_are_refused(
        images_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "build", fake_build([]))
    store = ImageStore(images_dir, sources=[], mount_points=POINTS)
    with pytest.raises(BadRequest, match="unknown image 'ubuntu'; the images are generic"):
        await store.ensure("ubuntu")
    with pytest.raises(BadRequest, match="'dotnet' is not available on this server: no .NET"):
        await store.ensure("dotnet")
    definition, root = await store.ensure("generic")
    boxes = tmp_path / "boxes"
    (boxes / "s1").mkdir(parents=True)
    (boxes / "s1" / "image").write_text(definition.digest)
    (boxes / "x2").mkdir()
    used = boxes_on_image(boxes, definition.digest)
    assert used == ["s1"]
    with pytest.raises(BadRequest, match=r"'generic' is used by 1 box\(es\) \(s1\)"):
        store.remove("generic", used)
    store.remove("generic", [])
    assert not mounted(root) and leftovers(images_dir) == []


def test_a_changed_definition_is_a_new_image() -> None:
    python = BUILTIN["python"]
    more = ImageDef(python.name, python.description, (*python.packages, "jq"))
    assert more.digest != python.digest
    # The order of packages, and python3 (every image has it, for boxd), change nothing.
    same = ImageDef(python.name, "", (*reversed(python.packages), "python3"))
    assert same.digest == python.digest
    argv = builder.command(python, Path("/x"), ["/etc/apt/sources.list.d/debian.sources"])
    # In a mount namespace of its own: what it mounts in the new root dies with it.
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[5:8] == ["mmdebstrap", "--variant=minbase", "--format=directory"]
    assert "python3-pytest" in argv[8] and argv[-3:] == [
        "bookworm", "/x", "/etc/apt/sources.list.d/debian.sources"]


def test_a_scratch_directory_is_never_removed_through_a_mount(tmp_path: Path) -> None:
    """What a build killed the hard way could leave: a mount in its scratch directory.
    It is unmounted first; the host's side of the mount is untouched."""
    scratch, outside = tmp_path / ".build-x", tmp_path / "outside"
    (scratch / "root/dev").mkdir(parents=True)
    outside.mkdir()
    (outside / "precious").write_text("keep")
    subprocess.run(["mount", "--bind", str(outside), str(scratch / "root/dev")], check=True)
    assert builder.mounts_under(scratch) == [str(scratch / "root/dev")]
    builder.remove_scratch(scratch)
    assert not scratch.exists() and (outside / "precious").read_text() == "keep"


async def test_a_user_image_adding_no_package_starts_from_its_built_base(
        images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No mmdebstrap of the same packages again: the base is built (once) and unpacked;
    an image that adds a Debian package is bootstrapped whole."""
    calls: list[str] = []
    monkeypatch.setattr(builder, "build", fake_build(calls))
    store = ImageStore(images_dir, sources=[], mount_points=POINTS)
    generic = BUILTIN["generic"]
    mine = ImageDef("mine", "", generic.packages, base="generic", run=("true",))
    ran: list[list[str]] = []

    async def steps(root: Path, steps: list[str], left: float,
                    heard: Callable[[str], None]) -> None:
        ran.append(steps)
        (root / "usr/bin/tool").write_text("made by a step\n")

    _, root = await store.ensure(mine, steps)
    assert calls == ["generic", f"mine from {generic.digest}"] and ran == [["true"]]
    assert (root / "usr/bin/tool").read_text() == "made by a step\n"
    assert (root / "usr/bin/su").read_text() == "#!/bin/sh\n"  # the base's files
    assert not (root / "usr/bin/su").stat().st_mode & stat.S_ISUID
    log = (images_dir / mine.digest / "build.log").read_text()
    assert log.startswith("$ unsquashfs -quiet -no-progress -dest ") and generic.digest in log
    more = ImageDef("more", "", (*generic.packages, "jq"), base="generic", run=("true",))
    await store.ensure(more, steps)
    assert calls[2:] == ["more"]
