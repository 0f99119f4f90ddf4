"""PATProcessor: PATImageProcessor + open_clip-exact CLIP tokenisation of prompt-template ensembles of class names."""

import html
import warnings
from functools import lru_cache

import torch
from tokenizers import pre_tokenizers
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration_pat import VILD_TEMPLATES, validate_prompt_templates
from .image_processing_pat import PATImageProcessor
from .open_clip_backend import DEFAULT_CONTEXT_LENGTH, clip_tokenizer_from_open_clip, is_open_clip_architecture


def clean_prompt(text: str) -> str:
    """open_clip's "lower" text cleaning: ftfy fix, HTML unescape (twice), whitespace collapse, lower-case."""
    try:
        import ftfy
    except ImportError as error:  # ftfy comes with open_clip_torch; without it ids would silently differ
        raise ImportError(
            "PATProcessor needs `ftfy` (pip install ftfy) to clean prompts exactly as open_clip."
        ) from error
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def validate_class_names(class_names, argument: str = "text") -> list[str]:
    """A class name or a list of them -> a list of names, checked; errors name `argument`.

    Rejected: anything but strings (TypeError), an empty list, blank names, and duplicates. Names are duplicates when
    CLIP's text cleaning makes them equal (case, spacing, HTML entities: "Cat" and "cat "): they would get identical
    embeddings, the label map could never use the second one, and deduplicating silently would shift the indices of
    the names after it (the label map indexes the list as given).
    """
    if isinstance(class_names, str):
        class_names = [class_names]
    if not isinstance(class_names, list | tuple):
        raise TypeError(
            f"`{argument}` must be a class name or a list of class names (strings), got {type(class_names).__name__}."
        )
    for index, name in enumerate(class_names):
        if not isinstance(name, str):
            raise TypeError(
                f"`{argument}[{index}]` must be a string (a class name), got {type(name).__name__} {name!r}; "
                "map class ids to their names first."
            )
    if not class_names:
        raise ValueError(f"`{argument}` must contain at least one class name.")
    first_index = {}
    for index, name in enumerate(class_names):
        key = clean_prompt(name)
        if not key:
            raise ValueError(f"`{argument}[{index}]` is an empty class name.")
        if key in first_index:
            first = first_index[key]
            raise ValueError(
                f"`{argument}` names the same class twice: {class_names[first]!r} (index {first}) and {name!r} "
                f"(index {index}); class names must be unique (compared lower-cased, spacing collapsed)."
            )
        first_index[key] = index
    return list(class_names)


@lru_cache(maxsize=8)
def _pretokenizer_pattern(special_tokens: tuple[str, ...]):
    """open_clip's word-splitting regex (case-insensitive, special tokens first), compiled with `regex`."""
    import regex

    special = "|".join(regex.escape(token) for token in special_tokens)
    return regex.compile(special + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


# Maps the UTF-8 bytes of a word onto the printable characters the byte-level BPE vocabulary is written in.
_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def encode_prompts(tokenizer, prompts: list[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (input_ids, attention_mask) int64 [N, context_length], exactly as open_clip's tokenizer."""
    # The BPE model and vocabulary are the tokenizer's, but cleaning and word splitting follow open_clip rather than
    # CLIPTokenizer's normaliser and pre-tokeniser: those differ on rare inputs (ftfy fixes, HTML entities, Greek final
    # sigma, "'ſ", literal "<|endoftext|>"), and a tokenizer reloaded from disk rebuilds them, so patching them fails.
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in (tokenizer.bos_token, tokenizer.eos_token)}
    pattern = _pretokenizer_pattern(tuple(special))
    bpe = tokenizer.backend_tokenizer.model
    sot, eot = special[tokenizer.bos_token], special[tokenizer.eos_token]

    input_ids = torch.zeros(len(prompts), context_length, dtype=torch.int64)  # zero padding, as open_clip
    attention_mask = torch.zeros(len(prompts), context_length, dtype=torch.int64)
    truncated = []
    for row, prompt in enumerate(prompts):
        ids = [sot]
        for word in pattern.findall(clean_prompt(prompt)):
            if word in special:
                ids.append(special[word])
            else:
                ids.extend(token.id for token in bpe.tokenize(_BYTE_LEVEL.pre_tokenize_str(word)[0][0]))
        ids.append(eot)
        if len(ids) > context_length:  # truncate, keeping end-of-text as the last token
            ids = ids[: context_length - 1] + [eot]
            truncated.append(prompt)
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        attention_mask[row, : len(ids)] = 1
    if truncated:
        examples = "; ".join(repr(p if len(p) <= 80 else p[:77] + "...") for p in truncated[:3])
        warnings.warn(
            f"{len(truncated)} prompt(s) are longer than CLIP's {context_length}-token context and were truncated "
            f"(their end is ignored): {examples}. Shorten the class name(s) to keep all of their words.",
            UserWarning,
            stacklevel=3,
        )
    return input_ids, attention_mask


class PATProcessor(ProcessorMixin):
    r"""
    Wraps a [`PATImageProcessor`] and a CLIP tokenizer. Class names are expanded into every prompt template and
    tokenised exactly as open_clip does (ids, zero padding, truncation), giving `input_ids` and `attention_mask` of
    shape [num_classes, num_templates, context_length]; images give `pixel_values`, `image_sizes`, `original_sizes`
    (and `labels` with `segmentation_maps`).

    Args:
        image_processor ([`PATImageProcessor`]): the image processor.
        tokenizer ([`CLIPTokenizer`]): CLIP BPE tokenizer; build it offline with `PATProcessor.from_open_clip`.
        prompt_templates (`list[str]`, *optional*): templates with one `{}`; defaults to the 14 ViLD templates.
    """

    def __init__(self, image_processor=None, tokenizer=None, prompt_templates=None, **kwargs):
        self.prompt_templates = validate_prompt_templates(
            VILD_TEMPLATES if prompt_templates is None else prompt_templates
        )
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_open_clip(cls, model_name: str = "ViT-B-16", prompt_templates=None, **image_processor_kwargs):
        """Build the processor offline: tokenizer from open_clip's bundled BPE vocabulary, default image processor."""
        return cls(
            image_processor=PATImageProcessor(**image_processor_kwargs),
            tokenizer=clip_tokenizer_from_open_clip(model_name),
            prompt_templates=prompt_templates,
        )

    @classmethod
    def from_config(cls, config, **image_processor_kwargs):
        """The processor a PATConfig needs: its CLIP tokenizer, prompt templates, size_divisibility, ignore_index."""
        # Towers built from a custom `clip_config` (e.g. the tiny test preset) have a name open_clip does not know;
        # they still use the standard CLIP BPE vocabulary.
        text_config = (config.clip_config or {}).get("text_cfg", {})
        known = is_open_clip_architecture(config.clip_model_name)
        tokenizer = clip_tokenizer_from_open_clip(
            config.clip_model_name if known else None, context_length=text_config.get("context_length")
        )
        image_processor_kwargs = {
            "size_divisibility": config.size_divisibility,
            "ignore_index": config.ignore_index,
            **image_processor_kwargs,
        }
        return cls(PATImageProcessor(**image_processor_kwargs), tokenizer, prompt_templates=config.prompt_templates)

    @property
    def context_length(self) -> int:
        """Token sequence length: the tokenizer's `model_max_length` (77 for CLIP)."""
        length = getattr(self.tokenizer, "model_max_length", None)
        return length if isinstance(length, int) and 0 < length < 100_000 else DEFAULT_CONTEXT_LENGTH

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        segmentation_maps=None,
        prompt_templates: list[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """
        images / segmentation_maps: passed to the image processor together with `**kwargs` (e.g. do_resize=False).
        text: class names (or one name); returns `input_ids` / `attention_mask` int64 [num_classes, num_templates, L].
            Names must be unique strings (`validate_class_names`); prompts longer than the context are truncated
            with a warning.
        prompt_templates: overrides `self.prompt_templates` for this call.
        """
        if images is None and text is None:
            raise ValueError("PATProcessor needs `images`, `text` (class names) or both.")
        if segmentation_maps is not None and images is None:
            raise ValueError("`segmentation_maps` were given without `images`.")
        data = {}
        if images is not None:
            image_inputs = self.image_processor(
                images, segmentation_maps=segmentation_maps, return_tensors=return_tensors, **kwargs
            )
            data.update(image_inputs)
        elif kwargs:
            raise TypeError(f"Unexpected keyword arguments without `images`: {sorted(kwargs)}.")
        if text is not None:
            data.update(self.encode_class_names(text, prompt_templates))
        if return_tensors is None:
            return BatchFeature(data=data)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def encode_class_names(self, class_names: str | list[str], prompt_templates: list[str] | None = None) -> dict:
        """Class names -> {"input_ids", "attention_mask"} int64 [num_classes, num_templates, context_length]."""
        class_names = validate_class_names(class_names, "text")
        templates = self.prompt_templates if prompt_templates is None else validate_prompt_templates(prompt_templates)
        prompts = [template.format(name) for name in class_names for template in templates]
        input_ids, attention_mask = encode_prompts(self.tokenizer, prompts, self.context_length)
        shape = (len(class_names), len(templates), self.context_length)
        return {"input_ids": input_ids.view(shape), "attention_mask": attention_mask.view(shape)}

    def post_process_semantic_segmentation(self, *args, **kwargs):
        """See [`PATImageProcessor.post_process_semantic_segmentation`]."""
        return self.image_processor.post_process_semantic_segmentation(*args, **kwargs)

    def post_process_instance_segmentation(self, *args, **kwargs):
        """See [`PATImageProcessor.post_process_instance_segmentation`]."""
        return self.image_processor.post_process_instance_segmentation(*args, **kwargs)

    def post_process_panoptic_segmentation(self, *args, **kwargs):
        """See [`PATImageProcessor.post_process_panoptic_segmentation`]."""
        return self.image_processor.post_process_panoptic_segmentation(*args, **kwargs)


__all__ = ["PATProcessor", "clean_prompt", "clip_tokenizer_from_open_clip", "encode_prompts", "validate_class_names"]
