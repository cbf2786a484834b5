"""Files checked against the sha256 recorded when they were written: one digest, one verified read.

Every cache and every saved file that distillctl reads back goes through these two functions: the
embedding cache (its manifest records each file's digest and size), distilled sets (their sidecar and
the run's manifest record the digest), the files a method caches (:class:`distillctl.toolbox.VerifiedCache`,
e.g. MTT's expert trajectories), and the identities of dataset files and model folders.

A file is read once: the digest is of the bytes in hand, and the caller parses those same bytes, so a
file changed between the check and the parse cannot slip through. Light: only the standard library.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: bytes hashed at a time when a file is hashed from disk (:func:`sha256_of` of a path)
CHUNK = 1 << 20


class NotVerified(Exception):
    """A file that is missing or is not what was recorded. ``problem`` says how, in words that follow
    the file's name (``is missing``, ``fails its sha256 check (corrupt)``); ``actual`` is the digest of
    what is on disk (None when it is missing or has the wrong size)."""

    def __init__(self, path: Path, problem: str, actual: str | None = None):
        super().__init__(f"{path} {problem}")
        self.path, self.problem, self.actual = path, problem, actual


def sha256_of(data: bytes | str | os.PathLike) -> str:
    """The hex sha256 of ``data``: bytes as they are, or a file's contents (a path; read in 1 MiB blocks)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    with open(data, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def read_verified(path: str | os.PathLike, sha256: str | None, *, size: int | None = None) -> tuple[bytes, str]:
    """``(contents, their sha256)`` of ``path``, read once, when they are what was recorded.

    Raises :class:`NotVerified` when the file is missing, has another length than ``size`` (when given:
    a truncated file is told apart from an altered one), or another digest than ``sha256``. ``sha256``
    None compares nothing (a file saved before digests were recorded): the caller decides what that means,
    with the digest returned.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotVerified(path, "is missing") from None
    if size is not None and len(data) != size:
        raise NotVerified(path, f"has {len(data)} bytes, {size} were recorded (truncated or changed)")
    actual = sha256_of(data)
    if sha256 is not None and actual != sha256:
        raise NotVerified(path, "fails its sha256 check (corrupt)", actual)
    return data, actual
