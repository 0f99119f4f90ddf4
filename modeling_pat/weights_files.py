"""Which weights file is bad, and how: safetensors headers checked by hand, so that a truncated download or a foreign
file is reported as an `OSError` naming the file instead of safetensors' bare "Error while deserializing header";
the same for `torch.load` of `.pth` files.

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON (name -> dtype, shape, data_offsets),
then the tensor data; the last tensor's end offset is the data size, so the exact file size is known from the header.
"""

import json
import os
import struct
from pathlib import Path

import torch


# A header is a few hundred bytes per tensor; anything near this is not a safetensors header (safetensors' own cap)
MAX_HEADER_BYTES = 100_000_000


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the safetensors file at `path` (truncated, extra bytes, corrupt or foreign header), or None
    when its header is sound and its size is exactly what the header announces. Reads the header only."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"only {size} bytes: empty or truncated (a safetensors file starts with an 8-byte header length)"
    with open(path, "rb") as handle:
        (header_bytes,) = struct.unpack("<Q", handle.read(8))
        if header_bytes > MAX_HEADER_BYTES:
            return f"not a safetensors file (its first 8 bytes announce an implausible {header_bytes}-byte header)"
        if 8 + header_bytes > size:
            return f"truncated: its header alone needs {8 + header_bytes} bytes, the file has {size}"
        try:
            header = json.loads(handle.read(header_bytes))
            tensors = [entry for key, entry in header.items() if key != "__metadata__"]
            data_bytes = max([0] + [int(entry["data_offsets"][1]) for entry in tensors])
        except (ValueError, TypeError, KeyError, IndexError) as error:
            return f"corrupt header (not the JSON tensor table safetensors writes: {error})"
    expected = 8 + header_bytes + data_bytes
    if size < expected:
        return f"truncated: {size} of {expected} bytes ({expected - size} missing)"
    if size > expected:
        return f"corrupt: {size - expected} bytes after the last tensor ({expected} expected)"
    return None


def bad_weights_error(files: list[str | os.PathLike], error: BaseException | None = None) -> OSError | None:
    """An OSError naming the first of `files` (existing .safetensors files) that is truncated or corrupt, or None."""
    for file in files:
        problem = safetensors_problem(file) if str(file).endswith(".safetensors") and Path(file).is_file() else None
        if problem is not None:
            return OSError(f"The weights file {file} is unusable: {problem}. Download or convert it again.")
    return None


def candidate_weights_files(name_or_path: str | os.PathLike, subfolder: str = "", cache_dir=None, revision=None):
    """The safetensors files `from_pretrained(name_or_path)` may have read: those of a local folder, else the Hub
    repository's files already in the local cache (no download is made)."""
    folder = Path(name_or_path) / subfolder
    if folder.is_dir():
        return sorted(folder.glob("*.safetensors"))
    from huggingface_hub import try_to_load_from_cache

    names = ["model.safetensors"]
    index = try_to_load_from_cache(str(name_or_path), _join(subfolder, "model.safetensors.index.json"),
                                   cache_dir=cache_dir, revision=revision)
    if isinstance(index, str):
        try:
            names += sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    found = [try_to_load_from_cache(str(name_or_path), _join(subfolder, name), cache_dir=cache_dir, revision=revision)
             for name in names]
    return [file for file in found if isinstance(file, str)]


def torch_load_weights(path: str | os.PathLike):
    """`torch.load(path, weights_only=True)` on the CPU; a file it cannot decode raises an OSError naming it (torch
    says e.g. only "PytorchStreamReader failed reading zip archive: failed finding central directory", or a bare
    KeyError). A missing file stays a FileNotFoundError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the file exists: whatever torch.load trips over is in the file
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # the weights-only unpickler's own reason is on a later line than its long advice
        reason = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else "")
        raise OSError(
            f"The checkpoint {path} ({path.stat().st_size} bytes) is unusable: truncated, corrupt, or holding more "
            f"than tensors and plain containers ({type(error).__name__}: {reason}). Download it again."
        ) from error


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder.strip('/')}/{name}" if subfolder else name


__all__ = ["bad_weights_error", "candidate_weights_files", "safetensors_problem", "torch_load_weights"]
