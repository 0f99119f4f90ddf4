"""Inference caches: values derived from the weights that cost too much to recompute on every call, in one object.

One rule for every entry: a cached value is valid while the weights, their dtype and device, and the mode stay as they
were when it was computed. `PATPreTrainedModel` therefore clears its cache when
- weights are loaded with `load_state_dict` (a model from `from_pretrained` starts with an empty cache: `post_init`
  attaches a fresh one, and nothing is computed before its weights are in place),
- the model moves or changes dtype (`.to`, `.cuda`, `.half`, ...: all go through `nn.Module._apply`),
- it switches between training and evaluation mode (`train` / `eval`),
and values that gradients flow through are never read from it while training (gradients must flow through the
weights, not around them; the class-name text embeddings are read, the text tower being frozen). Code that edits
weights in place without any of these (`param.data.copy_`, an optimiser step outside `Trainer`, merging
adapters) calls `model.clear_inference_caches()`.

The model owns one `PATInferenceCache`; `PATPreTrainedModel.post_init` hands the same object to every sub-module
that declares an `inference_cache` attribute, so a sub-module reads it as `self.inference_cache`.
"""

import threading
from collections.abc import Callable, Hashable
from typing import Any


class PATInferenceCache:
    """A keyed store of inference-only values, grouped by owner (e.g. "decoder.position_term")."""

    def __init__(self, max_entries_per_owner: int = 8):
        self.max_entries_per_owner = max_entries_per_owner
        self._entries: dict[str, dict[Hashable, Any]] = {}
        # one lock per cache (so one model's slow text encoding never holds up another model); re-entrant because a
        # value's computation may read another entry of the same cache
        self._lock = threading.RLock()

    def get(
        self, owner: str, key: Hashable, compute: Callable[[], Any], valid: Callable[[Any], bool] | None = None
    ) -> Any:
        """The value of `owner`'s `key`, computed with `compute()` on a miss (and the owner's oldest entry dropped
        beyond `max_entries_per_owner`). `valid`, for keys that do not hold everything the value depends on (e.g.
        token ids on an accelerator, compared there rather than hashed): a kept value it rejects is computed again
        and replaced. Concurrent callers wait for one another, so a value asked for by several threads is computed
        once."""
        with self._lock:
            entries = self._entries.setdefault(owner, {})
            if key in entries and (valid is None or valid(entries[key])):
                return entries[key]
            value = compute()
            entries.pop(key, None)
            if len(entries) >= self.max_entries_per_owner:
                entries.pop(next(iter(entries)))
            entries[key] = value
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def __repr__(self) -> str:
        owners = ", ".join(f"{owner}: {len(entries)}" for owner, entries in self._entries.items())
        return f"PATInferenceCache({owners})"

    def __deepcopy__(self, memo):
        return PATInferenceCache(self.max_entries_per_owner)  # a copy starts empty: its weights may be changed next

    def __getstate__(self):
        return {"max_entries_per_owner": self.max_entries_per_owner}  # pickled empty, without its lock

    def __setstate__(self, state):
        self.__init__(state["max_entries_per_owner"])
