"""Locks shared by every process of this machine: what the tools do not make atomic across processes."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


@contextmanager
def machine_lock(*key: str) -> Iterator[None]:
    """Hold the lock named by ``key`` (e.g. a store URI and a scope) until the block ends.

    The lock file lies in the temporary folder, so nothing is written into the project (which may be checked to be
    writable but should not gain files); processes on other machines are not covered.
    """
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:24]
    with FileLock(Path(tempfile.gettempdir()) / f"nas-{digest}.lock", mode=0o666):
        yield
