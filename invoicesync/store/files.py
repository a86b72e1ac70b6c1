"""Documents on disk, content-addressed: ``<dir>/ab/cd/<sha256>.<kind>``.

A file is written (to a temporary name, fsynced, then renamed) *before* the
database row that points at it commits, so a crash can leave an unreferenced
file — rewritten harmlessly next time — but never a row without its file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from invoicesync.errors import ConfigError

__all__ = ["DocumentFiles", "sha256_hex"]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DocumentFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {root}: {exc.strerror}", key="storage.dir") from None

    def relative_path(self, sha256: str, kind: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{kind}"

    def put(self, data: bytes, kind: str) -> tuple[str, str]:
        """Store ``data`` once; returns (sha256, path relative to the root)."""
        digest = sha256_hex(data)
        relative = self.relative_path(digest, kind)
        target = self.root / relative
        if target.exists() and target.stat().st_size == len(data):
            return digest, relative
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return digest, relative

    def get(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()
