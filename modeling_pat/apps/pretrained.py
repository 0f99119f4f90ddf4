"""Official SAN models by name: fetched from the Hub once, converted once, then loaded from a local cache.

    from modeling_pat import resolve_pretrained
    folder = resolve_pretrained("san-vit-b16")  # a save_pretrained folder: from_pretrained / pipeline(model=folder)

What a name resolves to, first match wins: an existing local folder (returned as is), an existing local file (an
official-layout `.pth` / `.safetensors`, converted), a short name from `OFFICIAL_MODELS` (its file fetched with
huggingface_hub, then converted), a Hub repo id `owner/name` (returned as is for `from_pretrained`).

Converted folders live in `converted_cache_dir()` (`$PAT_CONVERTED_CACHE`, default `$HF_HOME/modeling_pat/converted`),
one per `<sha256 of the source file>-v<CONVERTER_VERSION>`, with a `conversion.json` manifest written last. A folder
is built under a temporary name, checked and renamed into place under a file lock, so concurrent first uses convert
once and a crashed or damaged conversion (missing manifest, missing or truncated file) is detected and redone.

Application code: the model modules never import it.
"""

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path


CACHE_ENV = "PAT_CONVERTED_CACHE"
MANIFEST = "conversion.json"
HUB_TIMEOUT = 10  # seconds: one metadata request decides quickly whether the Hub is reachable (no retry loop)
REVERSE_TOLERANCE = 1e-5  # saved-and-reloaded outputs must equal the converted model's
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")  # owner/name
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class OfficialCheckpoint:
    """Where an official checkpoint lives on the Hub and the preset (`configuration/<preset>.json`) it fits."""

    repo_id: str
    filename: str
    preset: str


OFFICIAL_MODELS: dict[str, OfficialCheckpoint] = {
    "san-vit-b16": OfficialCheckpoint("Mendel192/san", "san_vit_b_16.pth", "san-clip-vit-b16"),
    "san-vit-l14-336": OfficialCheckpoint("Mendel192/san", "san_vit_large_14.pth", "san-clip-vit-l14-336"),
}


class WeightsUnavailableError(OSError):
    """An official checkpoint is neither cached nor downloadable now; the message says how to get it."""


class ConversionError(ValueError):
    """A converted folder failed its check (the conversion is not kept)."""


def register_official_model(name: str, repo_id: str, filename: str, preset: str) -> None:
    """Make `name` resolve to `filename` of the Hub repo `repo_id`, converted with the preset `preset`."""
    OFFICIAL_MODELS[name] = OfficialCheckpoint(repo_id, filename, preset)


# -- resolution -------------------------------------------------------------------------------------------------------
def resolve_pretrained(name_or_path: str | os.PathLike, revision: str | None = None, token=None) -> str:
    """A folder, official checkpoint file, short name or Hub id -> what `from_pretrained` loads (a local folder or
    the Hub id). Raises `WeightsUnavailableError` (an `OSError`) with instructions when a named model cannot be got."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file():
        return str(converted_folder(path, source=str(path)))
    name = str(name_or_path)
    if name in OFFICIAL_MODELS:
        entry = OFFICIAL_MODELS[name]
        checkpoint = fetch_checkpoint(name, revision=revision, token=token)
        return str(converted_folder(checkpoint, preset=entry.preset, source=entry.repo_id))
    if HUB_ID.fullmatch(name):
        return name
    raise WeightsUnavailableError(
        f"{name!r} is not a folder or file here, not a known model name ({', '.join(sorted(OFFICIAL_MODELS))}) and "
        "not a Hub repo id (owner/name)."
    )


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return value in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def fetch_checkpoint(name: str, revision: str | None = None, token=None) -> Path:
    """The local path of a named official checkpoint: from the Hub cache with no request when it is there, else
    downloaded (huggingface_hub's progress bar and cache). Fails within about HUB_TIMEOUT seconds when offline."""
    from huggingface_hub import hf_hub_download

    entry = OFFICIAL_MODELS[name]
    try:  # a cached file is used as is: official checkpoints never change
        return Path(hf_hub_download(entry.repo_id, entry.filename, revision=revision, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError, or no ref for this revision yet)
        pass
    if hub_offline():
        raise WeightsUnavailableError(how_to_get(name, revision, "offline mode: HF_HUB_OFFLINE is set"))
    _check_reachable(name, revision, token)
    try:
        return Path(hf_hub_download(entry.repo_id, entry.filename, revision=revision, token=token))
    except Exception as error:
        raise WeightsUnavailableError(how_to_get(name, revision, _first_line(error))) from error


def _check_reachable(name: str, revision: str | None, token) -> None:
    """One metadata request with a short timeout and no retries: hf_hub_download alone retries for about a minute
    when the network is unreachable."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    entry = OFFICIAL_MODELS[name]
    url = hf_hub_url(entry.repo_id, entry.filename, revision=revision)
    try:
        get_hf_file_metadata(url, token=token, timeout=HUB_TIMEOUT)
    except Exception as error:  # unreachable, timed out, repo / file / revision not found, gated
        raise WeightsUnavailableError(how_to_get(name, revision, _first_line(error))) from error


def how_to_get(name: str, revision: str | None, reason: str) -> str:
    """The one message for a named model that cannot be fetched: which file, from where, the command that fixes it."""
    entry = OFFICIAL_MODELS[name]
    option = f" --revision {revision}" if revision else ""
    return (
        f"The model {name!r} is the file {entry.filename} of the Hugging Face Hub repository {entry.repo_id} "
        f"(https://huggingface.co/{entry.repo_id}); it is not in the local Hub cache and cannot be downloaded now "
        f"({reason}).\n"
        f"To make it usable, run once where the Hub is reachable (same HF_HOME / HF_HUB_CACHE):\n"
        f"  hf download {entry.repo_id} {entry.filename}{option}\n"
        f"or pass a downloaded copy of the file itself as the model (e.g. --model ./{entry.filename}).\n"
        "For an offline smoke test with random weights: --model random:san-tiny"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text.splitlines()[0]}"


# -- the converted-model cache ----------------------------------------------------------------------------------------
def converted_cache_dir() -> Path:
    """`$PAT_CONVERTED_CACHE`, else `$HF_HOME/modeling_pat/converted`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "modeling_pat" / "converted"


def converted_folder(checkpoint: Path, preset: str | None = None, source: str | None = None) -> Path:
    """The cached conversion of `checkpoint` (an official-layout file), made now if it is missing or damaged.

    `preset` is detected from the tensor shapes when not given. Concurrent callers convert once: the second waits
    on the lock and then finds the finished folder.
    """
    from filelock import FileLock

    from .conversion import CONVERTER_VERSION

    root = converted_cache_dir()
    target = root / f"{file_sha256(checkpoint)}-v{CONVERTER_VERSION}"
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{target.name}.lock")):
        if not is_complete(target):  # another process may have finished it while we waited
            _convert_into(target, checkpoint, preset, source or str(checkpoint))
    return target


def is_complete(folder: Path) -> bool:
    """A finished conversion: its manifest reads and every file it lists is there with the recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        return bool(files) and all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _convert_into(target: Path, checkpoint: Path, preset: str | None, source: str) -> None:
    """Convert, save, check and write the manifest in a temporary folder, then rename it to `target`."""
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_conversion(staging, checkpoint, preset, source, sha256=target.name.split("-")[0])
        if target.exists():  # a damaged earlier conversion: out of the way first, so the rename cannot fail
            damaged = target.parent / f".{target.name}.damaged-{uuid.uuid4().hex[:8]}"
            os.rename(target, damaged)
            shutil.rmtree(damaged, ignore_errors=True)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_conversion(folder: Path, checkpoint: Path, preset: str | None, source: str, sha256: str) -> None:
    from ..configuration_pat import PATConfig
    from .conversion import CONVERTER_VERSION, read_checkpoint, reload_difference, save
    from .conversion import convert as convert_checkpoint
    from .model_card import write_model_card

    preset = preset or detect_preset(read_checkpoint(checkpoint), checkpoint.name)
    model = convert_checkpoint(checkpoint, PATConfig.from_preset(preset))  # every key mapped, shapes checked
    save(model, folder)
    write_model_card(folder, converted_from=source, source_checkpoint=checkpoint.name, source_sha256=sha256)
    difference = reload_difference(model, folder)  # one forward pass of the saved folder against the converted model
    if difference > REVERSE_TOLERANCE:
        raise ConversionError(
            f"The saved conversion of {checkpoint} differs from the converted model by {difference:.3g}."
        )
    manifest = {
        "source": source,
        "source_file": checkpoint.name,
        "source_sha256": sha256,
        "preset": preset,
        "converter_version": CONVERTER_VERSION,
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def detect_preset(state_dict: dict, filename: str = "") -> str:
    """The official preset a local checkpoint fits: by its official file name, else by its tensor shapes."""
    import torch

    from ..configuration_pat import PATConfig
    from .conversion import convert_state_dict
    from ..modeling_pat import PATForOpenVocabSegmentation

    presets = list(dict.fromkeys(entry.preset for entry in OFFICIAL_MODELS.values()))
    by_name = [entry.preset for entry in OFFICIAL_MODELS.values() if entry.filename == filename]
    for preset in by_name + [p for p in presets if p not in by_name]:
        config = PATConfig.from_preset(preset)
        with torch.device("meta"):  # shapes only, no memory
            expected = PATForOpenVocabSegmentation(config).state_dict()
        try:
            converted = convert_state_dict(state_dict, config)
        except ValueError:
            continue
        if set(converted) == set(expected) and all(converted[k].shape == expected[k].shape for k in expected):
            return preset
    raise ConversionError(f"{filename or 'The checkpoint'} fits none of the official SAN presets {presets}.")


def file_sha256(path: Path) -> str:
    """The file's sha256: a Hub cache blob's own name when it is one (huggingface_hub names LFS blobs by it), else
    hashed once and remembered for this path, size and modification time."""
    real = Path(path).resolve()
    if real.parent.name == "blobs" and SHA256.fullmatch(real.name):
        return real.name
    stat = real.stat()
    memo_key = hashlib.sha256(f"{real}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    memo = converted_cache_dir() / ".hashes" / memo_key
    if memo.is_file() and SHA256.fullmatch(memo.read_text().strip()):
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    temporary = memo.with_name(f"{memo.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(digest.hexdigest())
    os.replace(temporary, memo)
    return digest.hexdigest()


def list_cache() -> list[dict]:
    """One entry per cached conversion: folder, complete or not, size in bytes and the manifest's fields."""
    root = converted_cache_dir()
    entries = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        entries.append({"folder": str(folder), "complete": is_complete(folder), "size_bytes": size, **manifest})
    return entries


def clear_cache() -> int:
    """Remove every cached conversion (and leftovers of interrupted ones); returns how many conversions went."""
    root = converted_cache_dir()
    count = len(list_cache())
    if root.is_dir():
        for item in root.iterdir():
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            elif item.suffix != ".lock":  # a lock may be held by a running conversion
                item.unlink(missing_ok=True)
    return count


__all__ = [
    "OFFICIAL_MODELS",
    "ConversionError",
    "OfficialCheckpoint",
    "WeightsUnavailableError",
    "clear_cache",
    "converted_cache_dir",
    "converted_folder",
    "fetch_checkpoint",
    "list_cache",
    "register_official_model",
    "resolve_pretrained",
]
