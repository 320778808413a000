"""Atomic file output: every file wquant writes appears whole or not at all.

The data goes to a temporary file in the destination folder, gets the permissions a plain `open()` would
give it (mkstemp makes 0600), and is renamed over the destination in one step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from wquant.errors import ParameterError


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


def check_writable_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse, before any work starts and without creating anything, a folder that could not be written.

    The folder may not exist yet (it is created later); then its nearest existing parent must be writable.
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"{what} {folder} is a file, not a folder; choose another {what}")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ParameterError(f"{what} {folder}: {existing} is a file, not a folder; choose another {what}")
    _probe_writable(existing, what)
    return folder


def check_output_file(path: str | os.PathLike[str], what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output file that could not be written: a wrong suffix, a folder, a file
    where a folder is needed, or a place we may not write (read-only, no permission). Creates nothing."""
    target = Path(path).expanduser()
    if suffixes and target.suffix.lower() not in suffixes:
        raise ParameterError(f"{what}={str(path)!r} is invalid: the file must end in {', '.join(suffixes)}")
    if target.is_dir():
        raise ParameterError(f"{what}={str(path)!r} is invalid: it is a folder; give a file name")
    folder = target.parent.absolute()
    while not folder.exists():  # atomic_write creates missing folders; the first existing one must be writable
        folder = folder.parent
    if not folder.is_dir():
        raise ParameterError(f"cannot write {what}={str(path)!r}: {folder} is a file, not a folder; choose another")
    _probe_writable(folder, f"{what}={str(path)!r}")
    return target


def _probe_writable(folder: Path, what: str) -> None:
    """Create and drop an anonymous file in `folder`: the one test that also sees read-only file systems."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ParameterError(f"cannot write {what} in {folder}: {exc.strerror or exc}; choose another") from None


def check_output_folder(out_dir: str | os.PathLike[str], *, force: bool = False) -> Path:
    """The output folder, refused before any work if it is a file, not writable, or holds files and not force."""
    out = check_writable_dir(out_dir)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ParameterError(f"{out} exists and is not empty; pass --force to replace it")
    return out


def staging_folder(out: Path) -> Path:
    """An empty sibling of `out` to write a whole output folder into before `replace_folder` swaps it in."""
    staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def replace_folder(staging: Path, out: Path) -> None:
    """Swap the finished folder in: the old one (if any) is moved aside first and removed only afterwards."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
