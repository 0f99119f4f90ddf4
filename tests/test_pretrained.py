"""Official models by name, offline: a Hub cache in huggingface_hub's own layout holds a tiny official-layout SAN
checkpoint (the golden state dict saved as `{"model": ...}` like the official files); it is resolved, fetched from
the cache, converted, checked, reused, repaired and converted once by two processes at once."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from modeling_pat import PATProcessor
from modeling_pat.apps import pretrained
from modeling_pat.apps.cli import EXIT_MODEL, EXIT_OK, main
from modeling_pat.apps.conversion import convert, resolve_config
from modeling_pat.apps.pretrained import WeightsUnavailableError, resolve_pretrained

from conftest import GOLDEN


REPO_ROOT = Path(__file__).resolve().parent.parent
NAME, REPO_ID, FILENAME, REVISION = "san-tiny-official", "test-org/san-tiny", "san_tiny.pth", "0" * 39 + "1"
SAMPLE = REPO_ROOT / "tests" / "fixtures" / "samples" / "chelsea.png"


def official_checkpoint(path: Path) -> Path:
    torch.save({"model": load_file(str(GOLDEN / "reference_state_dict.safetensors")), "iteration": 1}, path)
    return path


def write_hub_cache(hub: Path) -> str:
    """models--ORG--NAME/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main}; returns the sha256."""
    repo = hub / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    staged = official_checkpoint(repo / "staged.pth")
    sha256 = hashlib.sha256(staged.read_bytes()).hexdigest()
    staged.rename(repo / "blobs" / sha256)
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    (repo / "snapshots" / REVISION / FILENAME).symlink_to(Path("..") / ".." / "blobs" / sha256)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return sha256


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> tuple[Path, str]:
    hub = tmp_path_factory.mktemp("hf_home") / "hub"
    return hub, write_hub_cache(hub)


@pytest.fixture
def offline(monkeypatch, hub_cache, tmp_path):
    """HF_HUB_OFFLINE with the test Hub cache, an empty converted-model cache and the tiny name registered."""
    hub, sha256 = hub_cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "converted"))
    monkeypatch.setitem(pretrained.OFFICIAL_MODELS, NAME, pretrained.OfficialCheckpoint(REPO_ID, FILENAME, "san-tiny"))
    return sha256


def test_a_name_is_fetched_from_the_hub_cache_converted_checked_and_reused(offline, tmp_path, monkeypatch):
    folder = Path(resolve_pretrained(NAME))
    assert folder.parent == tmp_path / "converted" and folder.name.startswith(offline)
    manifest = json.loads((folder / "conversion.json").read_text())
    assert manifest["source_sha256"] == offline and manifest["source"] == REPO_ID and manifest["preset"] == "san-tiny"
    assert offline in (folder / "README.md").read_text()  # the model card records the source file's hash
    expected = convert(GOLDEN / "reference_state_dict.safetensors", resolve_config(str(GOLDEN / "config.json")))
    saved = load_file(str(folder / "model.safetensors"))
    for key, tensor in expected.state_dict().items():
        torch.testing.assert_close(saved[key], tensor, rtol=0, atol=0)
    processor = PATProcessor.from_pretrained(folder)  # processor and tokenizer files are saved with the model
    ids = processor.encode_class_names(["cat", "grass"])["input_ids"]
    assert torch.equal(ids, PATProcessor.from_config(expected.config).encode_class_names(["cat", "grass"])["input_ids"])

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(pretrained, "_convert_into", no_conversion)
    assert Path(resolve_pretrained(NAME)) == folder


def test_a_damaged_conversion_is_detected_and_redone(offline):
    folder = Path(resolve_pretrained(NAME))
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:  # a conversion cut short
        handle.truncate(size // 2)
    assert not pretrained.is_complete(folder)
    assert Path(resolve_pretrained(NAME)) == folder
    assert weights.stat().st_size == size and pretrained.is_complete(folder)
    (folder / "conversion.json").unlink()  # a crash before the manifest
    assert Path(resolve_pretrained(NAME)) == folder and pretrained.is_complete(folder)


def test_a_local_official_file_is_converted_into_the_same_cache(offline, tmp_path):
    path = official_checkpoint(tmp_path / "downloaded.pth")  # not an official file name: the preset comes from shapes
    folder = Path(resolve_pretrained(path))
    assert json.loads((folder / "conversion.json").read_text())["preset"] == "san-tiny"
    assert folder.name.startswith(hashlib.sha256(path.read_bytes()).hexdigest())


def test_folders_and_hub_ids_pass_through_and_unknown_names_fail(offline, tmp_path):
    assert resolve_pretrained(tmp_path) == str(tmp_path)
    assert resolve_pretrained("someone/some-model") == "someone/some-model"
    with pytest.raises(WeightsUnavailableError, match="san-vit-b16"):
        resolve_pretrained("san-vit-b16-typo")


def test_offline_with_nothing_cached_fails_at_once_with_instructions(offline):
    start = time.perf_counter()
    with pytest.raises(OSError) as caught:  # an OSError subclass, as from_pretrained's own failures
        resolve_pretrained("san-vit-b16")
    assert time.perf_counter() - start < 5
    assert isinstance(caught.value, WeightsUnavailableError)
    message = str(caught.value)
    for text in ("san_vit_b_16.pth", "Mendel192/san", "hf download Mendel192/san san_vit_b_16.pth", "random:san-tiny"):
        assert text in message


def test_unreachable_hub_fails_fast_without_a_retry_loop(offline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
    template = "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="hf download Mendel192/san"):
        resolve_pretrained("san-vit-b16", revision="v1")
    assert time.perf_counter() - start < pretrained.HUB_TIMEOUT + 2


def test_cli_segments_with_a_named_model_and_lists_and_clears_the_cache(offline, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(SAMPLE), "--labels", "cat,grass", "--model", NAME, "--output-dir", str(out), "-q"]) == EXIT_OK
    assert (out / "chelsea_labels.png").is_file()
    assert main(["--list-cache"]) == EXIT_OK
    listed = capsys.readouterr().out
    assert f"{REPO_ID} {FILENAME}" in listed and "[ok]" in listed
    assert main(["--clear-cache"]) == EXIT_OK
    assert pretrained.list_cache() == []


def test_cli_default_model_offline_exits_3_with_one_message(offline, tmp_path, capsys):
    code = main([str(SAMPLE), "--labels", "cat", "--output-dir", str(tmp_path / "out")])
    assert code == EXIT_MODEL
    err = capsys.readouterr().err
    assert "hf download Mendel192/san san_vit_b_16.pth" in err and "random:san-tiny" in err
    assert err.count("random:san-tiny") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


RUN_CLI = """
import sys
from modeling_pat.apps.pretrained import register_official_model
register_official_model("san-vit-b16", {repo!r}, {file!r}, "san-tiny")  # the tiny checkpoint as the default model
import modeling_pat.apps.pretrained as pretrained
convert_into = pretrained._convert_into
def counted(*args, **kwargs):
    print("CONVERTING", flush=True)
    return convert_into(*args, **kwargs)
pretrained._convert_into = counted
from modeling_pat.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_using_the_default_model_at_once_convert_it_once(hub_cache, tmp_path):
    hub, sha256 = hub_cache
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub), PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    env[pretrained.CACHE_ENV] = str(tmp_path / "converted")
    script = textwrap.dedent(RUN_CLI).format(repo=REPO_ID, file=FILENAME)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(SAMPLE), "--labels", "cat,grass",
             "--output-dir", str(tmp_path / f"o{i}"), "-q"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert sum(out.count("CONVERTING") for out, _ in outputs) == 1
    entries = os.listdir(tmp_path / "converted")
    assert [e for e in entries if not e.startswith(".") and not e.endswith(".lock")] == [f"{sha256}-v1"]
    assert not [e for e in entries if ".tmp-" in e]
    for i in range(2):
        assert (tmp_path / f"o{i}" / "chelsea_labels.png").is_file()
