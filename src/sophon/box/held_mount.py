"""A spare disk's filesystem set up ahead and held by a mount attached nowhere.

Mounting a box's ext4 image takes the kernel about 0.6 ms (reading the superblock and
group descriptors, loading the journal, starting its thread); a second mount of a device
whose filesystem is set up already reuses it and takes a few microseconds. So each spare
disk gets that first mount ahead, made with the kernel's mount API (``fsopen``,
``fsconfig``, ``fsmount``): a mount that belongs to no namespace, so no mount table (the
host's or a box's) ever lists it, reachable only through the descriptor this module
returns. The box's launcher then mounts the device in its own namespace as before, and the
server closes the descriptor once the box has started (or failed to).

Linux 5.2 or newer, and root. Where either is missing a spare simply has no held mount.
"""

from __future__ import annotations

import os

from sophon.box.libc import LIBC, checked

# The same numbers on every architecture: these calls came after the tables were unified.
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
# The held mount is only a reference: nothing is ever run or opened through it.
MOUNT_ATTR_LOCKED_DOWN = 0x1 | 0x2 | 0x4 | 0x8  # RDONLY, NOSUID, NODEV, NOEXEC


def _call(what: str, number: int, *args: object) -> int:
    return checked(LIBC.syscall(number, *args), what)


def hold(device: str, fstype: str, data: str) -> int:
    """Set up the filesystem on ``device`` with the options ``data`` (``mount -o``'s
    filesystem part, comma-separated) and return a descriptor of a mount of it attached
    nowhere; closing it lets the filesystem go unless something else mounted it."""
    fs = _call("fsopen", SYS_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC)
    try:
        _call("fsconfig source", SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, b"source",
              device.encode(), 0)
        for option in filter(None, data.split(",")):
            key, eq, value = option.partition("=")
            if eq:
                _call(f"fsconfig {key}", SYS_FSCONFIG, fs, FSCONFIG_SET_STRING,
                      key.encode(), value.encode(), 0)
            else:
                _call(f"fsconfig {key}", SYS_FSCONFIG, fs, FSCONFIG_SET_FLAG,
                      key.encode(), None, 0)
        _call(f"setting up {device}", SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0)
        return _call("fsmount", SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_LOCKED_DOWN)
    finally:
        os.close(fs)
