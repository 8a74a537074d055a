"""The key connectors' secrets are sealed with: a file of its own, kept apart from the database.

The file (`connectors_key_file`, default `<data dir>/connectors.key`, 0600) holds Fernet keys,
newest first, one a line. Sealing uses the first; opening tries each (MultiFernet), so a
rotation can never leave a row that no key opens:

1. `begin_rotation()` writes [new, old...] (atomically: a temp file renamed over the old one);
2. the caller re-seals every row with the new key in one transaction;
3. `end_rotation()` writes [new].

A crash between the steps leaves both keys in the file and every row readable; the next
rotation finishes the job. Whoever seals (create, update) holds the file's lock shared, a
rotation holds it exclusive, so no row is sealed with a key that is about to be dropped. A
server re-reads the file when it changes (a rotation by the CLI beside it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import SandboxdError


class KeyringError(SandboxdError):
    """The key file is missing, unreadable or malformed (the message says which, never a key)."""


class Keyring:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: tuple[int, int, int] | None = None
        self._fernet: MultiFernet | None = None
        self._count = 0

    # --- sealing ---------------------------------------------------------------------------

    def seal(self, plain: bytes) -> bytes:
        """Under `writing()`: the newest key; the file is made on first use."""
        if not self.path.exists():
            self._write([Fernet.generate_key()], exclusive=True)
        return self._ring().encrypt(plain)

    def open(self, sealed: bytes) -> bytes | None:
        """The plain bytes, or None when no key in the file opens them (or they were tampered)."""
        try:
            ring = self._ring()
        except KeyringError:
            return None
        try:
            return ring.decrypt(sealed)
        except InvalidToken:
            return None

    def reseal(self, sealed: bytes) -> bytes:
        """`sealed` under the newest key (during a rotation); InvalidToken when no key opens it."""
        return self._ring().rotate(sealed)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held while sealing and storing: a rotation waits for it, and it for a rotation."""
        with self._flock(fcntl.LOCK_SH):
            yield

    # --- rotation --------------------------------------------------------------------------

    @contextlib.contextmanager
    def rotation(self) -> Iterator[None]:
        """The exclusive lock; inside it: begin_rotation, re-seal every row, end_rotation."""
        with self._flock(fcntl.LOCK_EX):
            yield

    def begin_rotation(self) -> None:
        keys = self._keys() if self.path.exists() else []
        self._write([Fernet.generate_key(), *keys])

    def end_rotation(self) -> None:
        self._write(self._keys()[:1])

    @property
    def key_count(self) -> int:
        self._ring()
        return self._count

    # --- the file --------------------------------------------------------------------------

    def _ring(self) -> MultiFernet:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise KeyringError(f"the connectors key file {self.path} is missing") from None
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._fernet is None or seen != self._seen:
            keys = self._keys()
            self._fernet = MultiFernet([Fernet(k) for k in keys])
            self._count = len(keys)
            self._seen = seen
        return self._fernet

    def _keys(self) -> list[bytes]:
        try:
            lines = self.path.read_bytes().split()
        except OSError as exc:
            raise KeyringError(f"the connectors key file {self.path} cannot be read: {exc.strerror}") from None
        try:
            for line in lines:
                Fernet(line)
        except ValueError:
            raise KeyringError(f"the connectors key file {self.path} is malformed") from None
        if not lines:
            raise KeyringError(f"the connectors key file {self.path} is empty")
        return lines

    def _write(self, keys: list[bytes], *, exclusive: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\n".join(keys) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:  # first use: two creators must not each make a key
            try:
                os.link(temp, self.path)
            except FileExistsError:
                pass
            os.unlink(temp)
        else:
            os.replace(temp, self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)
