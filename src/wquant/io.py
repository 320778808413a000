"""Atomic file output: every file wquant writes appears whole or not at all.

The data goes to a temporary file in the destination folder, gets the permissions a plain `open()` would
give it (mkstemp makes 0600), and is renamed over the destination in one step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def file_mode() -> int:
    """The permissions `open()` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call write(temporary path), then move the result onto `path`; on any failure nothing is left behind."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes atomically."""
    blob = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write(path, lambda tmp: tmp.write_bytes(blob))
