"""The C library, for the few calls the ``os`` module lacks (mount, umount2, the mount
API's syscalls), and its failures raised as ``OSError`` naming what was being done.
(spawnd.py keeps a copy of ``checked``: it runs without this package.)"""

from __future__ import annotations

import ctypes
import os

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def checked(result: int, what: str) -> int:
    """``result`` of a call that returns -1 and sets errno when it fails."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return int(result)
