"""Atomic file writes: a file appears under its final name complete, or not at all.

Every writer goes to a temporary file in the target's own folder (so the final rename stays on one file system and
is atomic) and renames it over the target only once the content is flushed to disk. A crash, a full disk or an
exception while writing leaves the previous file (if any) untouched and no half-written file under the final name.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


TEMPORARY_SUFFIX = ".tmp"


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread writes files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Permissions an ordinary `open(path, "w")` would give; mkstemp's 0600 would hide results from other users.
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` for a writer that needs a file name (PIL, safetensors, ...); once the
    block ends without an exception the file is synced and renamed to `path`, otherwise it is removed.

    Raises OSError (e.g. IsADirectoryError when a folder is in the way, PermissionError, ENOSPC) from the writer or
    the rename; the temporary file is gone in either case.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    os.close(handle)
    try:
        yield Path(temporary)
        _sync(temporary)
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    finally:
        with suppress(FileNotFoundError):
            os.remove(temporary)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """`open(path, mode)` for writing ("w" or "wb"), atomically (see `atomic_path`)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as temporary:
        with open(temporary, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`Path(path).write_text(text)` (UTF-8), atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


@contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty staging folder inside `folder` for a writer of several files (e.g. `save_pretrained`); once the
    block ends without an exception each file is synced and renamed into `folder` (one atomic rename per file),
    otherwise the staging folder is removed and `folder` keeps exactly what it had."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
    try:
        yield staging
        for file in sorted(staging.iterdir()):
            if not file.is_file():
                raise IsADirectoryError(f"staged_folder moves files only; {file.name} is a folder")
            _sync(str(file))
        for file in sorted(staging.iterdir()):
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sync(path: str) -> None:
    # the data must be on disk before the rename is, or a power loss can leave an empty file under the final name
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


__all__ = ["atomic_open", "atomic_path", "staged_folder", "write_text_atomic"]
