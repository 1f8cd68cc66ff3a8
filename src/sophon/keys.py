"""The server's keys (files of the data directory, 0600, made on first use) and the one
way values are encrypted at rest.

- ``secret_key``: the Fernet key that seals session secrets and webhook signing secrets;
  ``SOPHON_SECRET_KEY`` if set, else ``secret.key``.
- ``signing_key``: 32 random bytes, ``files.key``, that sign the files API's URLs;
  deleting it voids every URL given out.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from sophon.errors import SophonError

SECRET_KEY_FILE = "secret.key"
SIGNING_KEY_FILE = "files.key"
SIGNING_KEY_BYTES = 32


def _key_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The key in ``path``, made there first (0600, never replaced) if there is none."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(make())
    return path.read_bytes()


def secret_key(data_dir: Path) -> bytes:
    env = os.environ.get("SOPHON_SECRET_KEY")
    if env:
        return env.encode()
    return _key_file(data_dir / SECRET_KEY_FILE, Fernet.generate_key).strip()


def signing_key(data_dir: Path) -> bytes:
    path = data_dir / SIGNING_KEY_FILE
    key = _key_file(path, lambda: secrets.token_bytes(SIGNING_KEY_BYTES))
    if len(key) < SIGNING_KEY_BYTES:
        raise SophonError(f"{path} is damaged: delete it and restart (signed URLs "
                          "given out so far stop working)")
    return key


class Sealer:
    """Encrypts values for the database and opens them again."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def unseal(self, token: bytes, what: str, remedy: str = "") -> str:
        """The value; a clear error naming ``what`` if the key that sealed it is gone."""
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise SophonError(f"{what} cannot be decrypted: the secret key changed "
                              f"(SOPHON_SECRET_KEY or {SECRET_KEY_FILE} in the data "
                              f"directory){remedy}") from exc
