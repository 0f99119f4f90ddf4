"""Class embeddings: class names or their token ids -> CLIP text embeddings, cached in memory and on disk.

`PATClassEmbeddingsMixin` is the text side of `PATForOpenVocabSegmentation`: prompts from the class names and the
templates, the text tower run in chunks of classes, the in-memory cache (the model's `inference_cache`) and the
optional on-disk cache keyed by the text weights' fingerprint, which `save_pretrained` stores in the config so a new
process does not hash the text tower. Shapes: N classes, T templates, D CLIP embedding (`modeling_pat.py`'s table).
"""

import functools
import os
import warnings

import torch

from .configuration_pat import validate_prompt_templates
from .model_inputs import check_input_ids
from .text_embedding_cache import fingerprint_text_weights, read_text_cache, text_cache_path, update_text_cache


# Classes per text-tower call in `get_class_embeddings` (x the prompt templates): bounds memory for large vocabularies.
TEXT_CHUNK_CLASSES = 64


def input_ids_key(input_ids: torch.Tensor) -> tuple:
    """Text-cache key of a vocabulary given as ids: on the host their shape and a hash of their bytes; on an
    accelerator the shape and device only, the ids being compared on the device on a hit (`same_input_ids`): hashing
    them would copy the whole (N, T, context length) array to the host at every training step."""
    if ids_on_host(input_ids):
        return ("ids", tuple(input_ids.shape), hash(input_ids.detach().numpy().tobytes()))
    return ("device ids", tuple(input_ids.shape), str(input_ids.device), input_ids.dtype)


def ids_on_host(input_ids: torch.Tensor) -> bool:
    return input_ids.device.type == "cpu"


def same_input_ids(kept: torch.Tensor | None, input_ids: torch.Tensor | None) -> bool:
    """Whether a cache entry holds these ids: always for host keys (their hash is in the key), else compared on the
    device (one boolean read back instead of the ids)."""
    return kept is None or torch.equal(kept, input_ids)


class PATClassEmbeddingsMixin:
    """The text side of `PATForOpenVocabSegmentation` (which sets `_text_fingerprint = None` in its `__init__`)."""

    # Folder of the optional on-disk text-embedding cache (`get_class_embeddings`); None: memory only.
    text_embedding_cache_dir: str | os.PathLike | None = None

    def prompt_input_ids(self, class_names: list[str], templates=None) -> torch.Tensor:
        """Class names -> (N, T, 77) ids of every name in every template (`config.prompt_templates` by default)."""
        templates = list(self.config.prompt_templates) if templates is None else validate_prompt_templates(templates)
        prompts = [template.format(name) for name in class_names for template in templates]
        ids = self.model.clip_tower.tokenize(prompts).reshape(len(class_names), len(templates), -1)
        full = (ids[..., -1] != 0).any(dim=1)  # the last position holds a token only when the prompt was cut to fit
        if bool(full.any()):
            names = [n if len(n) <= 40 else n[:37] + "..." for n, f in zip(class_names, full.tolist()) if f]
            warnings.warn(
                f"Class name(s) {names[:3]}{' ...' if len(names) > 3 else ''} fill CLIP's {ids.shape[-1]}-token "
                "context in a prompt template and were truncated (their end is ignored); shorten them.",
                UserWarning,
                stacklevel=2,
            )
        return ids.to(self.device)

    def get_class_embeddings(
        self, input_ids: torch.Tensor | None = None, class_names: list[str] | None = None, cache_dir=None
    ):
        """(N, T, context length) ids or N class names (default: `config.id2label`) -> (N, D) unit class embeddings,
        cached.

        Cached in memory per vocabulary in the model's inference cache (`inference_cache.py`: dropped when weights
        are loaded, the model moves or switches mode, or `clear_inference_caches()` is called after an in-place edit;
        bypassed while a text parameter is trainable). Class names are also cached on disk when `cache_dir` (default:
        `self.text_embedding_cache_dir`) is set: one row per name in a file keyed by the text weights
        (`text_weights_fingerprint`), the prompt templates and the cache format, so another process starts without
        running the text tower, and a weight or template change misses. Only names not on disk are encoded.
        Thread-safe: concurrent callers wait, so a vocabulary asked for by several threads is encoded once.
        """
        if input_ids is None:
            class_names = class_names if class_names is not None else self.default_class_names()
            if len(class_names) == 0:
                raise ValueError(
                    "No class names: pass `class_names`, `input_ids` (PATProcessor(text=[...])) or `class_embeddings`, "
                    "or give the model a default vocabulary in `config.id2label`."
                )
            key = ("names", tuple(class_names), tuple(self.config.prompt_templates))
        else:
            tower = self.model.clip_tower
            check_input_ids(input_ids, tower.text_tower.token_embedding.num_embeddings, tower.context_length)
            key = input_ids_key(input_ids)
        compute = functools.partial(self._compute_class_embeddings, input_ids, class_names, cache_dir)
        if self._text_tower_trainable():  # its weights may change at every step, unseen by the cache
            return compute()[1]
        _, embeddings = self.inference_cache.get(
            "text_embeddings", key, compute, valid=lambda entry: same_input_ids(entry[0], input_ids)
        )
        return embeddings

    def _compute_class_embeddings(self, input_ids, class_names, cache_dir) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A text-cache entry: (the ids when they are on an accelerator, to be compared there at the next lookup
        since their key has no content; else None, (N, D) embeddings), from the disk cache or the text tower."""
        cache_dir = self.text_embedding_cache_dir if cache_dir is None else cache_dir
        if input_ids is None and cache_dir is not None:
            embeddings = self._disk_cached_class_embeddings(list(class_names), cache_dir)
        else:
            ids = self.prompt_input_ids(class_names) if input_ids is None else input_ids
            embeddings = self._encode_class_names(ids)
        kept_ids = None if input_ids is None or ids_on_host(input_ids) else input_ids.detach().clone()
        return kept_ids, embeddings

    def _text_tower_trainable(self) -> bool:
        return any(param.requires_grad for param in self.model.clip_tower.text_parameters())

    def _encode_class_names(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, T, context length) ids -> (N, D) through the text tower, in chunks of classes.

        Always in the weights' dtype, autocast off: the result is cached per vocabulary (and on disk), so embeddings
        made under a training step's autocast must not be what a later full-precision evaluation gets.
        """
        # in chunks of classes: 1,000 names x 14 templates at once would need GBs of activations
        with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
            chunks = input_ids.to(self.device).split(TEXT_CHUNK_CLASSES)
            return torch.cat([self.model.clip_tower.encode_class_names(chunk) for chunk in chunks])

    def text_weights_fingerprint(self) -> str:
        """sha256 of the text tower's weights (`fingerprint_text_weights`): the text embeddings' key on disk.

        Computed once and kept with the model: a model from `from_pretrained` starts with the fingerprint its config
        carries (`save_pretrained` stores it), so a new process does not hash the tower. Hashed again after
        `load_state_dict`, after `clear_inference_caches()` (call it when editing weights in place), after a dtype
        change, and at every call while a text parameter is trainable. A move to another device keeps it."""
        params = self.model.clip_tower.text_parameters()
        dtypes = tuple(param.dtype for param in params)
        if any(param.requires_grad for param in params):
            return fingerprint_text_weights(params)
        if self._text_fingerprint is None or self._text_fingerprint[0] != dtypes:
            self._text_fingerprint = (dtypes, fingerprint_text_weights(params))
        return self._text_fingerprint[1]

    def clear_inference_caches(self) -> None:
        """`PATPreTrainedModel.clear_inference_caches`, and the text weights' fingerprint is hashed again at its next
        use: call this after editing weights in place (nothing else can see such an edit)."""
        super().clear_inference_caches()
        self._text_fingerprint = None

    def _text_parameter_names(self) -> list[str]:
        """State-dict names of `text_parameters()`, in that order (the order the fingerprint hashes them in)."""
        names = {id(param): name for name, param in self.named_parameters(remove_duplicate=False)}
        return [names[id(param)] for param in self.model.clip_tower.text_parameters()]

    def _saved_text_fingerprint(self, state_dict: dict | None) -> str | None:
        """`config.text_weights_fingerprint` ("<dtype>:<sha256>") of the text weights about to be saved: the
        memoised fingerprint of the model's own weights, or a hash of `state_dict`'s when one is passed. None when
        those weights are missing or not of one dtype (nothing is then stored and a loader hashes them)."""
        if state_dict is None:
            tensors = self.model.clip_tower.text_parameters()
        else:
            tensors = [state_dict.get(name) for name in self._text_parameter_names()]
            if any(not isinstance(t, torch.Tensor) for t in tensors):
                return None
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1 or any(t.device.type == "meta" for t in tensors):
            return None
        digest = self.text_weights_fingerprint() if state_dict is None else fingerprint_text_weights(tensors)
        return f"{str(dtypes.pop()).removeprefix('torch.')}:{digest}"

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """`PreTrainedModel.save_pretrained`, with the text weights' fingerprint in the saved config
        (`config.text_weights_fingerprint`), so a process that loads the model reads it instead of hashing."""
        self.config.text_weights_fingerprint = self._saved_text_fingerprint(state_dict)
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, output_loading_info=False, **kwargs):
        """`PATPreTrainedModel.from_pretrained`; the config's text-weights fingerprint becomes the model's for the
        weights just loaded, unless a text weight was missing from the files or loaded in another dtype."""
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        model._adopt_saved_text_fingerprint(info)
        return (model, info) if output_loading_info else model

    def _adopt_saved_text_fingerprint(self, loading_info: dict) -> None:
        saved = self.config.text_weights_fingerprint
        if saved is None:
            return
        dtype, _, digest = saved.partition(":")
        names = set(self._text_parameter_names())
        mismatched = {key for key, *_ in loading_info.get("mismatched_keys", ())}
        not_loaded = set(loading_info.get("missing_keys", ())) | mismatched
        params = self.model.clip_tower.text_parameters()
        if names & not_loaded or any(str(p.dtype).removeprefix("torch.") != dtype for p in params):
            return
        self._text_fingerprint = (tuple(param.dtype for param in params), digest)

    def _disk_cached_class_embeddings(self, class_names: list[str], cache_dir) -> torch.Tensor:
        """(N, D) embeddings of `class_names` from the on-disk cache; names not there are encoded and added."""
        templates = tuple(self.config.prompt_templates)
        fingerprint = self.text_weights_fingerprint()
        path = text_cache_path(cache_dir, fingerprint, templates)
        rows = read_text_cache(path, fingerprint, templates)  # {} (with a warning) when the file is not trustworthy
        missing = [name for name in dict.fromkeys(class_names) if name not in rows]
        if missing:
            encoded = dict(zip(missing, self._encode_class_names(self.prompt_input_ids(missing)).to("cpu")))
            rows.update(encoded)
            update_text_cache(path, encoded, fingerprint, templates)  # merged under a lock; a warning if unwritable
        dtype = self.model.clip_tower.text_tower.text_projection.dtype
        return torch.stack([rows[name] for name in class_names]).to(self.device, dtype)

    def default_class_names(self) -> list[str]:
        id2label = self.config.id2label or {}
        return [id2label[i] for i in sorted(id2label, key=int)]
