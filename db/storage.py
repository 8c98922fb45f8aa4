"""The artifact store: uploaded models, datasets, logs and packed models, by key.

:class:`ArtifactStore` is the interface (an S3-compatible implementation fits behind it);
:class:`LocalArtifactStore` keeps files under one directory. Writes are atomic (a temp file
in the same directory, fsync, then rename) and return the sha256; reads of a file whose
checksum is known verify it first, so a corrupted or truncated file is never served.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

CHUNK = 1024 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class StorageError(Exception):
    """A file is missing or does not match its recorded checksum."""


class TooLarge(StorageError):
    """An upload went past its size cap; nothing was stored."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore(Protocol):
    """Where files live. Keys are relative, slash-separated paths."""

    def local_path(self, key: str) -> Path:
        """A local file holding the key's bytes (download first for remote stores)."""
        ...

    def put_file(self, key: str, source: Path) -> tuple[str, int]:
        """Move or copy ``source`` to ``key`` atomically; returns (sha256, size)."""
        ...

    def verified_path(self, key: str, sha256: str) -> Path:
        """The key's local file after checking its sha256; raises StorageError if it differs."""
        ...

    def delete(self, key: str) -> None:
        """Remove the key (and nothing else); a missing key is not an error."""
        ...


class LocalArtifactStore:
    """An :class:`ArtifactStore` on a local (or mounted, shared) directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        # path -> (file identity, sha256 it had): a file is hashed again only when it changed.
        self._verified: dict[Path, tuple[tuple[int, ...], str]] = {}

    def local_path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise StorageError(f"invalid artifact key {key!r}")
        return self.root / key

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh path on the store's file system, for a file renamed into place later."""
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", suffix=suffix)
        os.close(fd)
        return Path(name)

    def put_file(self, key: str, source: Path) -> tuple[str, int]:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(source)
        size = source.stat().st_size
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(source, target)
        return digest, size

    def put_stream(self, key: str, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[str, int]:
        """Write chunks to ``key`` atomically with a size cap; returns (sha256, size)."""
        tmp = self.temp_path()
        try:
            digest = hashlib.sha256()
            size = 0
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(f"larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            target = self.local_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            return digest.hexdigest(), size
        finally:
            tmp.unlink(missing_ok=True)

    def verified_path(self, key: str, sha256: str) -> Path:
        """The key's file after checking its sha256 (raises StorageError if it differs).

        The hash is computed again whenever the file's identity (inode, size, mtime, ctime)
        changed since it last matched; any write to the file changes its ctime, which no
        user-space call can set back, so an edited file is always hashed again.
        """
        path = self.local_path(key)
        identity = _identity(path)
        if identity is None:
            raise StorageError(f"artifact {key} is missing")
        if self._verified.get(path) == (identity, sha256):
            return path
        actual = sha256_file(path)
        if actual != sha256:
            self._verified.pop(path, None)
            raise StorageError(f"artifact {key} is corrupted (sha256 {actual} != {sha256})")
        self._verified[path] = (identity, sha256)
        return path

    def is_verified(self, key: str, sha256: str) -> bool:
        """True when the key's file matched ``sha256`` and has not changed since: a stat,
        never a read (:meth:`verified_path` hashes it again when this is False)."""
        try:
            path = self.local_path(key)
        except StorageError:
            return False
        identity = _identity(path)
        return identity is not None and self._verified.get(path) == (identity, sha256)

    def verified_bytes(self, key: str, sha256: str) -> bytes:
        """The key's bytes, read once and checked against ``sha256`` (what is checked is
        exactly what is returned: no window between the check and the use)."""
        path = self.local_path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise StorageError(f"artifact {key} is missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise StorageError(f"artifact {key} is corrupted (sha256 {actual} != {sha256})")
        return data

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every file under a key prefix (a job's directory)."""
        base = self.local_path(prefix)
        if base.is_dir():
            for path in sorted(base.rglob("*"), reverse=True):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
            base.rmdir()


def _identity(path: Path) -> tuple[int, ...] | None:
    """A regular file's identity (device, inode, size, mtime, ctime); None if it is not one."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
