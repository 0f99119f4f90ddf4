"""The inference cache's one invalidation rule: loading weights, moving, a dtype change and a mode switch clear it."""

import copy
import pickle
import time

import torch

from modeling_pat.inference_cache import PATInferenceCache

from conftest import tiny_model


def test_get_computes_once_per_key_and_bounds_each_owner():
    cache = PATInferenceCache(max_entries_per_owner=2)
    calls = []
    for key in ("a", "a", "b", "c"):
        cache.get("owner", key, lambda key=key: calls.append(key) or key.upper())
    assert calls == ["a", "b", "c"]
    assert len(cache) == 2  # "a" was dropped for "c"
    assert cache.get("owner", "a", lambda: "again") == "again"


def _filled(model) -> PATInferenceCache:
    model.inference_cache.get("test", "key", lambda: torch.zeros(1))
    assert len(model.inference_cache) == 1
    return model.inference_cache


def test_one_cache_object_serves_the_whole_model():
    model = tiny_model()
    assert model.model.inference_cache is model.inference_cache


def test_every_invalidating_event_clears_the_cache():
    model = tiny_model().eval()
    events = {
        "load_state_dict": lambda: model.load_state_dict(model.state_dict()),
        "dtype change": lambda: model.to(torch.float64),
        "move": lambda: model.to("cpu"),
        "train": lambda: model.train(),
        "eval": lambda: model.eval(),
        "explicit": model.clear_inference_caches,
    }
    for name, event in events.items():
        cache = _filled(model)
        event()
        assert len(cache) == 0, name


def test_same_mode_keeps_the_cache():
    model = tiny_model().eval()
    cache = _filled(model)
    model.eval()
    assert len(cache) == 1


def test_copies_start_empty_and_keep_one_shared_cache():
    model = tiny_model().eval()
    _filled(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert len(clone.inference_cache) == 0
        assert clone.model.inference_cache is clone.inference_cache


def test_one_models_slow_computation_does_not_hold_up_another_model():
    import threading

    first, second = PATInferenceCache(), PATInferenceCache()
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(5)
        return "slow"

    worker = threading.Thread(target=first.get, args=("owner", "key", slow))
    worker.start()
    started.wait(5)
    try:
        begin = time.perf_counter()
        assert second.get("owner", "key", lambda: "fast") == "fast"
        assert time.perf_counter() - begin < 2  # under one shared lock it waits the 5 s of `release.wait`
    finally:
        release.set()
        worker.join()
