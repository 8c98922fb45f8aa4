"""The artifact download hashes what it sends and holds the last chunk back until it matches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from api.routes.jobs import DOWNLOAD_CHUNK, _checked_chunks
from db.storage import StorageError


def test_a_file_that_went_bad_is_never_sent_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * (DOWNLOAD_CHUNK * 5 // 2 // 256)  # 2.5 chunks
    path = tmp_path / "model.bfm"
    path.write_bytes(data)
    good = hashlib.sha256(data).hexdigest()
    assert b"".join(_checked_chunks(path, good)) == data

    sent: list[bytes] = []
    with pytest.raises(StorageError, match="corrupted"):
        sent.extend(_checked_chunks(path, hashlib.sha256(b"what was stored").hexdigest()))
    assert len(sent) == 2  # the third (last) chunk never left
    assert sum(map(len, sent)) < len(data)

    small = tmp_path / "small.bfm"
    small.write_bytes(b"x")
    assert list(_checked_chunks(small, hashlib.sha256(b"x").hexdigest())) == [b"x"]
    with pytest.raises(StorageError):
        list(_checked_chunks(small, good))
