"""The on-disk text-embedding cache (`modeling_pat/text_embedding_cache.py`): optional and trustworthy."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modeling_pat.text_embedding_cache import _write

from conftest import tiny_model


NAMES = ["cat", "sky", "grass"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def reference(model):
    """The embeddings computed without any disk cache."""
    model.inference_cache.clear()
    return model.get_class_embeddings(class_names=NAMES, cache_dir=None).clone()


def _fresh(model, cache_dir, names=NAMES):
    model.inference_cache.clear()  # as a new process would: nothing in memory
    return model.get_class_embeddings(class_names=names, cache_dir=cache_dir)


def _cache_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("pat-text-*.safetensors")
    return path


def _stored_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["names"])


def _flip_last_data_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x40])  # a bit flip in the last row: still a valid safetensors file


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: data[: len(data) // 2], "unreadable"),
        (lambda data: data[:-10] + b"\0" * 10, "checksum mismatch"),
        (_flip_last_data_byte, "checksum mismatch"),
        (lambda data: b"", "unreadable"),
    ],
)
def test_a_damaged_file_is_recomputed_with_a_warning(model, reference, tmp_path, damage, problem):
    _fresh(model, tmp_path)
    path = _cache_file(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.warns(UserWarning, match=problem):
        embeddings = _fresh(model, tmp_path)
    torch.testing.assert_close(embeddings, reference, rtol=0, atol=1e-6)
    assert sorted(_stored_names(path)) == sorted(NAMES)  # rewritten whole
    torch.testing.assert_close(_fresh(model, tmp_path), reference, rtol=0, atol=1e-6)


def test_rows_that_are_not_finite_unit_vectors_are_never_served(model, reference, tmp_path):
    _fresh(model, tmp_path)
    path = _cache_file(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        meta, rows = handle.metadata(), handle.get_tensor("embeddings")
    rows[1] = float("nan")
    rows[2] *= 3.0
    # a foreign writer with the right key and a matching checksum, but rows no text tower gives
    _write(path, dict(zip(json.loads(meta["names"]), rows)), meta["fingerprint"], json.loads(meta["templates"]))
    with pytest.warns(UserWarning, match="not finite unit vectors"):
        embeddings = _fresh(model, tmp_path)
    torch.testing.assert_close(embeddings, reference, rtol=0, atol=1e-6)


def test_an_unwritable_cache_folder_is_a_warning_not_a_failure(model, reference, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(UserWarning, match="Could not write the text-embedding cache"):
        embeddings = _fresh(model, tmp_path / "a-file" / "cache")
    torch.testing.assert_close(embeddings, reference, rtol=0, atol=1e-6)


FILLER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from modeling_pat import PATConfig, PATForOpenVocabSegmentation

    cache, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)  # the same weights in both processes: the same cache file
    model = PATForOpenVocabSegmentation(PATConfig.from_preset("san-tiny")).eval()
    model.text_weights_fingerprint()
    (cache.parent / f"ready-{tag}").touch()
    while len(list(cache.parent.glob("ready-*"))) < 2:  # start together
        time.sleep(0.01)
    for k in range(rounds):
        model.get_class_embeddings(class_names=[f"{tag} thing {k}"], cache_dir=cache)
    """
)


def test_two_processes_filling_one_cache_keep_every_row(tmp_path):
    cache, rounds = tmp_path / "cache", 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    fillers = [
        subprocess.Popen([sys.executable, "-c", FILLER, str(cache), tag, str(rounds)], env=env, stderr=subprocess.PIPE)
        for tag in ("first", "second")
    ]
    for filler in fillers:
        _, err = filler.communicate(timeout=600)
        assert filler.returncode == 0, err.decode()[-2000:]
    expected = {f"{tag} thing {k}" for tag in ("first", "second") for k in range(rounds)}
    assert set(_stored_names(_cache_file(cache))) == expected
    assert not list(cache.glob("*.tmp"))


def _count_hashes(monkeypatch) -> list:
    """Records every hash of the text tower (`fingerprint_text_weights`) the model makes from now on."""
    import modeling_pat.class_embeddings as modeling

    calls = []
    real = modeling.fingerprint_text_weights
    monkeypatch.setattr(modeling, "fingerprint_text_weights", lambda params: calls.append(1) or real(params))
    return calls


def test_a_loaded_model_keys_the_disk_cache_by_its_saved_fingerprint_without_hashing(model, tmp_path, monkeypatch):
    from modeling_pat import PATForOpenVocabSegmentation

    model.save_pretrained(tmp_path / "saved")
    hashed = model.text_weights_fingerprint()
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["text_weights_fingerprint"] == (
        f"float32:{hashed}"
    )
    loaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path / "saved")
    calls = _count_hashes(monkeypatch)
    _fresh(loaded, tmp_path / "cache")
    assert calls == []  # the first disk lookup read the key from the config
    assert loaded.text_weights_fingerprint() == hashed  # the key hashing would give
    assert _cache_file(tmp_path / "cache").exists()

    with torch.no_grad():  # a text weight changed after loading (and announced): the saved key no longer holds
        loaded.model.clip_tower.text_tower.text_projection.add_(1.0)
    loaded.clear_inference_caches()
    changed = loaded.text_weights_fingerprint()
    assert calls == [1] and changed != hashed


def test_a_saved_fingerprint_is_not_trusted_for_weights_loaded_in_another_dtype(model, tmp_path, monkeypatch):
    from modeling_pat import PATForOpenVocabSegmentation

    model.save_pretrained(tmp_path / "saved")
    loaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path / "saved", dtype=torch.bfloat16)
    calls = _count_hashes(monkeypatch)
    assert loaded.text_weights_fingerprint() != model.text_weights_fingerprint()
    assert calls == [1]


def test_save_pretrained_fingerprints_the_state_dict_it_is_given(model, tmp_path):
    from modeling_pat import PATForOpenVocabSegmentation

    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    state["model.clip_tower.clip.text_projection"] = state["model.clip_tower.clip.text_projection"] + 1
    model.save_pretrained(tmp_path / "saved", state_dict=state)
    loaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path / "saved")
    saved_key = loaded.text_weights_fingerprint()
    loaded.clear_inference_caches()  # hash the loaded weights for real
    assert loaded.text_weights_fingerprint() == saved_key != model.text_weights_fingerprint()
