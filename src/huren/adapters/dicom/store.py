"""Content-addressed file store for DICOM originals (implements ``services.imaging.BlobStore``).

A file lives at ``<root>/<h[0:2]>/<h[2:4]>/<h>.dcm`` where ``h`` is the SHA-256 of its bytes,
so the same bytes are stored once and a path never changes meaning. Files are written to a
temporary name in the same directory, fsynced, renamed into place, and the directory is
fsynced: after ``put`` returns the file survives a crash, and a reader never sees half a
file. The bytes are kept exactly as received (transfer syntax included)."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_HASH = re.compile(r"^[0-9a-f]{64}$")


class ContentAddressedStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync

    def _path(self, content_hash: str) -> Path:
        if not _HASH.match(content_hash):
            raise ValueError(f"not a sha256 hex digest: {content_hash!r}")
        return self.root / content_hash[:2] / content_hash[2:4] / f"{content_hash}.dcm"

    def path(self, content_hash: str) -> str:
        return str(self._path(content_hash))

    def put(self, data: bytes, content_hash: str) -> None:
        target = self._path(content_hash)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self._fsync:
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def read(self, content_hash: str) -> bytes:
        return self._path(content_hash).read_bytes()

    def exists(self, content_hash: str) -> bool:
        return self._path(content_hash).exists()
