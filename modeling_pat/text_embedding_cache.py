"""The optional on-disk cache of class-name text embeddings (`PATForOpenVocabSegmentation.get_class_embeddings`).

One safetensors file per (text weights, prompt templates, cache format), holding one unit row per class name ever
asked for. The cache is an optimisation only, so it must never make an inference fail or go wrong:

* a file that is truncated, corrupt or foreign (bad checksum, wrong key, rows not finite or not of unit norm) is a
  miss with a warning: its rows are recomputed, never returned;
* a folder that cannot be created, locked or written is a warning: the embeddings are used, just not kept;
* writers in several processes merge: each one re-reads the file under an exclusive lock (`fcntl.flock` on a lock
  file beside it), adds its rows and replaces the file atomically, so every row any process asked for is kept and a
  reader never sees half a file.
"""

import hashlib
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .atomic_files import atomic_path


# Version of the file layout (part of every key: a new layout never reads an old file). 2: checksum, rows validated.
TEXT_CACHE_FORMAT = "2"
# How far from 1 a stored row's L2 norm may be (rows are stored in the text tower's dtype; bf16 keeps ~3 digits).
UNIT_NORM_TOLERANCE = 1e-2


def fingerprint_text_weights(parameters: list[torch.Tensor]) -> str:
    """sha256 over the text tower's parameters (order, dtype, shape and every byte): the on-disk cache's weight key."""
    digest = hashlib.sha256()
    for index, param in enumerate(parameters):
        tensor = param.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{index}|{tensor.dtype}|{tuple(param.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def text_cache_path(cache_dir, fingerprint: str, templates) -> Path:
    """File of one (text weights, templates) pair; it holds one row per class name ever asked for."""
    key = json.dumps([TEXT_CACHE_FORMAT, fingerprint, list(templates)], ensure_ascii=False)
    return Path(cache_dir) / f"pat-text-{hashlib.sha256(key.encode()).hexdigest()[:40]}.safetensors"


def read_text_cache(path: Path, fingerprint: str, templates) -> dict[str, torch.Tensor]:
    """{class name: (D,) unit embedding} from a cache file; {} when it is absent or keyed differently, and {} with a
    warning when it is unreadable, truncated, corrupt or holds rows that are not finite unit vectors."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if not _same_key(meta, fingerprint, templates):
                return {}
            names, rows = json.loads(meta["names"]), handle.get_tensor("embeddings")
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        return _discard(path, f"unreadable ({type(error).__name__}: {error})")
    problem = _rows_problem(names, rows, meta.get("sha256"))
    if problem is not None:
        return _discard(path, problem)
    return dict(zip(names, rows))


def update_text_cache(path: Path, new_rows: dict[str, torch.Tensor], fingerprint: str, templates) -> None:
    """Add `new_rows` to the cache file, keeping every row another process has added meanwhile (re-read and written
    under an exclusive lock, replaced atomically). Any OS error (read-only or full disk, no permission) is a warning:
    the cache is optional. Rows that are not finite unit vectors are never stored."""
    new_rows = {name: row for name, row in new_rows.items() if _is_unit_row(row)}
    if not new_rows:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(path.with_name(path.name + ".lock")):
            rows = read_text_cache(path, fingerprint, templates)
            rows.update(new_rows)
            _write(path, rows, fingerprint, templates)
    except OSError as error:
        warnings.warn(
            f"Could not write the text-embedding cache {path} ({error}); the embeddings are used but not kept, so "
            "they are computed again next time. Point the cache at a writable folder to keep them.",
            UserWarning,
            stacklevel=3,
        )


def _write(path: Path, rows: dict[str, torch.Tensor], fingerprint: str, templates) -> None:
    from safetensors.torch import save_file

    names = list(rows)
    embeddings = torch.stack([row.detach().to("cpu") for row in rows.values()]).contiguous()
    meta = {
        "format": TEXT_CACHE_FORMAT,
        "fingerprint": fingerprint,
        "templates": json.dumps(list(templates), ensure_ascii=False),
        "names": json.dumps(names, ensure_ascii=False),
        "sha256": _checksum(names, embeddings),
    }
    with atomic_path(path) as temporary:  # a reader in another process never sees half a file
        save_file({"embeddings": embeddings}, str(temporary), metadata=meta)


def _same_key(meta: dict, fingerprint: str, templates) -> bool:
    return (
        meta.get("format") == TEXT_CACHE_FORMAT
        and meta.get("fingerprint") == fingerprint
        and meta.get("templates") == json.dumps(list(templates), ensure_ascii=False)
    )


def _checksum(names: list[str], embeddings: torch.Tensor) -> str:
    """sha256 over the names and every byte of the rows (with their dtype and shape)."""
    digest = hashlib.sha256(json.dumps(names, ensure_ascii=False).encode())
    digest.update(f"{embeddings.dtype}|{tuple(embeddings.shape)}".encode())
    digest.update(embeddings.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _rows_problem(names, rows: torch.Tensor, checksum: str | None) -> str | None:
    """Why a file's rows cannot be trusted, or None."""
    if not isinstance(names, list) or rows.ndim != 2 or len(names) != rows.shape[0]:
        return "corrupt (the names do not match the rows)"
    if checksum != _checksum(names, rows):
        return "corrupt (checksum mismatch)"
    if not all(_is_unit_row(row) for row in rows):
        return "holds rows that are not finite unit vectors"
    return None


def _is_unit_row(row: torch.Tensor) -> bool:
    row = row.detach().float()
    return bool(torch.isfinite(row).all()) and abs(float(row.norm()) - 1.0) <= UNIT_NORM_TOLERANCE


def _discard(path: Path, problem: str) -> dict:
    warnings.warn(
        f"Ignoring the text-embedding cache file {path}: {problem}. Its embeddings are computed again and the file "
        "is rewritten.",
        UserWarning,
        stacklevel=4,
    )
    return {}


@contextmanager
def _exclusive_lock(lock_path: Path):
    """An exclusive advisory lock held for the block (`fcntl.flock`; released by the OS if the process dies). Where
    fcntl does not exist (Windows) there is no lock: the atomic replace still keeps every file whole."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = ["fingerprint_text_weights", "read_text_cache", "text_cache_path", "update_text_cache"]
