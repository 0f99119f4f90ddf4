"""`PATImageSegmentationPipeline`: the stock image-segmentation pipeline plus open-vocabulary `candidate_labels`.

A strict superset of transformers' `ImageSegmentationPipeline`:

* For a SAN/PAT model it accepts `candidate_labels` (a list of names, one comma-separated string, or one list per
  image for a list of images) and `prompt_templates`; without labels it segments with `config.id2label`.
* For any other model every call goes to the stock implementation unchanged.

`subtask="instance"` / `"panoptic"` give one entry per segment (see the class docstring); by default (None or
"semantic") the output is exactly the stock `subtask="semantic"` branch's: per image a list of
`{"score", "label", "mask"}`, one entry per class present in the label map, `score` None (a label map has no
per-class confidence), `mask` a PIL mode "L" image (0 / 255) at the original image size. So the semantic path asks
post-processing for the label map only, never for the (N, H_out, W_out) scores, which keeps its CPU class pruning.

Text embeddings come from `model.get_class_embeddings`, cached per vocabulary in the model's inference cache,
and are passed to the model as `class_embeddings`, so the text tower runs once per vocabulary, not once per image.
(So labels are not tokenised per image in `preprocess`: each image
carries its resolved vocabulary, and `_forward` looks the embeddings up for the batch.) A batch whose images have
different vocabularies runs once over their union; each image's logits are then its own columns plus void.

    from modeling_pat import resolve_pretrained  # importing modeling_pat registers this pipeline (`register_pipeline`)
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=resolve_pretrained("san-vit-b16"))
    segmenter("samples/coffee.png", candidate_labels=["cup", "saucer", "table"])
    segmenter(["a.png", "b.png"], candidate_labels=[["cat", "sofa"], ["car", "road"]], batch_size=2)

Without registration, `pipeline("image-segmentation", model=..., pipeline_class=PATImageSegmentationPipeline)`
gives the same pipeline with no process-wide side effect.
"""

import collections.abc
import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.image_segmentation import ImageSegmentationPipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
from transformers.utils import logging as hf_logging

from ..configuration_pat import PATConfig, stuff_class_names, validate_prompt_templates
from ..image_processing_pat import get_padded_size, load_image, padding_groups
from ..processing_pat import validate_class_names
from .sliding_window import sliding_window_scores


logger = hf_logging.get_logger(__name__)

TASK = "image-segmentation"
SEGMENT_SUBTASKS = ("instance", "panoptic")
SLIDING_WINDOW_KEYS = ("sliding_window", "window_stride", "window_size")


@dataclass(frozen=True)
class PATVocabulary:
    """One image's vocabulary: class names and prompt templates. Hashable (batches group images by it), and a
    dataclass rather than a tuple, so the pipeline's device transfer, which rebuilds tuples, leaves it whole."""

    names: tuple[str, ...]
    templates: tuple[str, ...]


def normalize_candidate_labels(candidate_labels) -> list[str]:
    """A comma-separated string or a list of names -> a list of non-empty names, stripped, order kept.

    Duplicates (equal after CLIP's text cleaning, e.g. "cat" and "Cat") are an error, as in `PATProcessor` and the
    CLI (`validate_class_names`): one rule everywhere, and an entry's index always means the same name.
    """
    if isinstance(candidate_labels, str):
        names = [name.strip() for name in candidate_labels.split(",")]
        names = [name for name in names if name]
    elif isinstance(candidate_labels, list | tuple):
        names = [name.strip() if isinstance(name, str) else name for name in candidate_labels]
    else:
        raise TypeError(
            "`candidate_labels` must be a list of class names, a comma-separated string, or (for a list of images) "
            f"one such entry per image; got {candidate_labels!r}."
        )
    return validate_class_names(names, "candidate_labels")


def is_per_image_labels(candidate_labels) -> bool:
    """True for one entry per image: a list of label lists, comma strings or None (= `config.id2label`) with at
    least one list among them. A flat list of strings is one vocabulary shared by every image."""
    return (
        isinstance(candidate_labels, list | tuple)
        and len(candidate_labels) > 0
        and all(entry is None or isinstance(entry, list | tuple | str) for entry in candidate_labels)
        and any(isinstance(entry, list | tuple) for entry in candidate_labels)
    )


def collate_open_vocab_batch(items: list[dict]) -> dict:
    """Preprocessed single images -> one batch: `pixel_values` zero-padded at the bottom/right to the largest
    (H_img, W_img) (what `PATImageProcessor` does for a batch: both are multiples of `size_divisibility`), other tensors
    concatenated, other values collected into a list (one entry per image, as the stock collator does)."""
    keys = list(items[0].keys())
    if any(list(item.keys()) != keys for item in items):
        raise ValueError("The elements of the batch contain different keys; cannot batch them.")
    batch = {}
    for key in keys:
        values = [item[key] for item in items]
        if key == "pixel_values":
            height = max(v.shape[-2] for v in values)
            width = max(v.shape[-1] for v in values)
            # (1, 3, h, w) -> (1, 3, H, W), zeros after normalisation as PATImageProcessor pads
            values = [F.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2])) for v in values]
            batch[key] = torch.cat(values, dim=0)
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.cat(values, dim=0)
        else:
            batch[key] = values
    return batch


def _per_image_sizes(nested) -> list[tuple[int, int]]:
    """The (H_out, W_out) of each image from the pipeline's list-wrapped `target_size` (`[(H_out, W_out)]` or
    `[[(H_out, W_out)], ...]`)."""
    if isinstance(nested, tuple) or (isinstance(nested, list) and len(nested) == 2 and isinstance(nested[0], int)):
        return [(int(nested[0]), int(nested[1]))]
    return [size for item in nested for size in _per_image_sizes(item)]


def _leaves(nested) -> list:
    """Flatten the nested lists the pipeline wraps per-image values in (`[v]` single, `[[v1], [v2]]` batched)."""
    if isinstance(nested, list | tuple):
        return [leaf for item in nested for leaf in _leaves(item)]
    return [nested]


# What `_forward` keeps of the model's output, per image.
MODEL_OUTPUT_FIELDS = ("class_queries_logits", "masks_queries_logits", "image_sizes", "padded_sizes")


class PATImageSegmentationPipeline(ImageSegmentationPipeline):
    r"""
    Image segmentation with open-vocabulary SAN/PAT models; the stock `ImageSegmentationPipeline` for every other
    model.

    Extra call (or construction) arguments, SAN/PAT models only:
        candidate_labels (`str`, `list[str]` or `list[list[str]]`, *optional*):
            Class names to segment with: a list, one comma-separated string, or, for a list of images, one list per
            image (a None entry means the default for that image). Default: the model's `config.id2label`. May also
            be given per image as `{"image": ..., "candidate_labels": [...]}` inputs.
        prompt_templates (`str` or `list[str]`, *optional*):
            Templates with one `{}`; each name's text embedding is the mean over them. Default:
            `model.config.prompt_templates`.
        sliding_window (`bool`, *optional*, defaults to `False`):
            Sliding-window inference (`modeling_pat.apps.sliding_window`): the resized image is covered by overlapping
            windows of the training size (`config.side_image_size`) and the per-class scores are averaged; for
            images much larger than that size (e.g. with a processor `size` above the training resolution).
        window_stride (`int`, *optional*): pixels between windows; default two thirds of the window.
        window_size (`int`, *optional*): window side; default `config.side_image_size`.

    `subtask`: None or `"semantic"` (the default here, unlike the stock pipeline, which prefers panoptic) gives one
    entry per class present; `"instance"` and `"panoptic"` give one entry per segment of the processor's
    `post_process_instance_segmentation` / `post_process_panoptic_segmentation`, best score first, with
    `threshold` (default 0.9, as in the stock pipeline), `mask_threshold` and `overlap_mask_area_threshold`
    passed on as the stock pipeline does (for semantic they are unused). Panoptic fuses the candidate labels that
    the shipped vocabularies mark as stuff (`stuff_class_names`, e.g. "sky", "grass") into one segment per class.
    Images in a batch (`batch_size > 1`) may have different sizes; each still gets masks at its original size, and
    sizes too different to pad together (`padding_groups`: one very wide image among small ones) run as separate
    forward passes. Semantic entries have `score` None, as in the stock pipeline; instance and panoptic
    entries have the segment's score. An empty list of images gives an empty list.
    """

    # -- model dispatch --------------------------------------------------------------------------------------------
    @property
    def is_open_vocabulary(self) -> bool:
        """Whether the model is SAN/PAT (also when loaded as remote code, hence duck typing, not isinstance)."""
        model = getattr(self, "model", None)
        return getattr(getattr(model, "config", None), "model_type", None) == PATConfig.model_type and callable(
            getattr(model, "get_class_embeddings", None)
        )

    def check_model_type(self, supported_models):
        if self.is_open_vocabulary:
            return
        super().check_model_type(supported_models)

    # -- arguments -------------------------------------------------------------------------------------------------
    def __call__(self, inputs=None, candidate_labels=None, **kwargs):
        """See the class docstring and [`ImageSegmentationPipeline.__call__`]; `images=` is accepted as there."""
        if "images" in kwargs:
            inputs = kwargs.pop("images")
        if not self.is_open_vocabulary:
            extra = [k for k in ("prompt_templates", *SLIDING_WINDOW_KEYS) if k in kwargs]
            if candidate_labels is not None or extra:
                logger.warning(
                    f"{type(self.model).__name__} is not an open-vocabulary model: `candidate_labels`, "
                    "`prompt_templates` and the sliding-window options are ignored (as the stock image-segmentation "
                    "pipeline does)."
                )
                for key in extra:
                    kwargs.pop(key)
            return super().__call__(inputs, **kwargs)
        if is_per_image_labels(candidate_labels):
            if not isinstance(inputs, list) or len(inputs) != len(candidate_labels):
                raise ValueError(
                    "Per-image `candidate_labels` (a list of lists) need a list of images of the same length; got "
                    f"{len(candidate_labels)} label lists for {type(inputs).__name__} inputs."
                )
            inputs = [{"image": image, "candidate_labels": labels} for image, labels in zip(inputs, candidate_labels)]
        elif candidate_labels is not None:
            kwargs["candidate_labels"] = candidate_labels
        if isinstance(inputs, list | tuple) and len(inputs) == 0:
            # No images, no annotations; the arguments are still checked, so a bad call fails with or without images.
            self._sanitize_parameters(**{k: v for k, v in kwargs.items() if k not in ("batch_size", "num_workers")})
            return []
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, **kwargs):
        candidate_labels = kwargs.pop("candidate_labels", None)
        prompt_templates = kwargs.pop("prompt_templates", None)
        sliding = {key: kwargs.pop(key) for key in SLIDING_WINDOW_KEYS if key in kwargs}
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if self.is_open_vocabulary:
            if sliding.get("sliding_window") is not None:
                preprocess_params["sliding_window"] = bool(sliding["sliding_window"])
            forward_params.update(sliding)
            if candidate_labels is not None:
                if is_per_image_labels(candidate_labels):
                    raise ValueError("Per-image `candidate_labels` can only be given when calling the pipeline.")
                preprocess_params["candidate_labels"] = normalize_candidate_labels(candidate_labels)
            if prompt_templates is not None:
                preprocess_params["prompt_templates"] = validate_prompt_templates(prompt_templates)
        return preprocess_params, forward_params, postprocess_params

    def resolve_vocabulary(self, candidate_labels=None, prompt_templates=None) -> PATVocabulary:
        """Resolve one image's vocabulary: the given names or `config.id2label`, the given or the config's templates."""
        config = self.model.config
        if prompt_templates is None:
            prompt_templates = config.prompt_templates
        templates = tuple(validate_prompt_templates(prompt_templates))
        if candidate_labels is None:
            id2label = config.id2label or {}
            if not id2label:
                raise ValueError("The model has no `config.id2label` vocabulary: pass `candidate_labels`.")
            return PATVocabulary(tuple(id2label[key] for key in sorted(id2label, key=int)), templates)
        return PATVocabulary(tuple(normalize_candidate_labels(candidate_labels)), templates)

    # -- the three steps -------------------------------------------------------------------------------------------
    def preprocess(
        self, image, subtask=None, timeout=None, candidate_labels=None, prompt_templates=None, sliding_window=False
    ):
        if not self.is_open_vocabulary:
            return super().preprocess(image, subtask=subtask, timeout=timeout)
        if isinstance(image, dict):  # {"image": ..., "candidate_labels": ..., "prompt_templates": ...}
            candidate_labels = image.get("candidate_labels", candidate_labels)
            prompt_templates = image.get("prompt_templates", prompt_templates)
            image = image["image"]
        image = load_image(image, timeout=timeout)
        # Sliding windows pad each window themselves; `image_sizes` marks the real pixels after batch padding.
        inputs = self.image_processor(
            images=[image], return_tensors="pt", do_pad=not sliding_window, device=self.preprocess_device()
        ).to(self.dtype)
        inputs["target_size"] = [(image.height, image.width)]
        # List-wrapped per-image values stay lists through collation and un-batching (as `target_size` does).
        inputs["vocabulary"] = [self.resolve_vocabulary(candidate_labels, prompt_templates)]
        return inputs

    def preprocess_device(self) -> torch.device | None:
        """The model's device, where the image processor uploads the image and resizes and normalises it (no
        float copy on the host); None in DataLoader workers (`num_workers` > 0), which must not touch a GPU."""
        if torch.utils.data.get_worker_info() is not None:
            return None
        return self.device

    def _forward(self, model_inputs, sliding_window=False, window_stride=None, window_size=None):
        if not self.is_open_vocabulary:
            return super()._forward(model_inputs)
        target_size = model_inputs.pop("target_size")
        vocabulary = model_inputs.pop("vocabulary")
        if not sliding_window and (window_stride is not None or window_size is not None):
            raise ValueError("`window_stride` and `window_size` only apply with `sliding_window=True`.")
        class_embeddings, label_columns = self.batch_class_embeddings(_leaves(vocabulary))
        if sliding_window:  # per image, its own vocabulary's rows; label maps at the original size
            label_maps = []
            for b, (height, width) in enumerate(model_inputs["image_sizes"].tolist()):
                rows = label_columns[b, :-1].to(class_embeddings.device)
                pixel_values = model_inputs["pixel_values"][b, :, :height, :width]
                scores = sliding_window_scores(
                    self.model, pixel_values, class_embeddings[rows], window_size, window_stride,
                    output_size=_per_image_sizes(target_size)[b],
                )
                # The averaged (N, H_out, W_out) scores only decide the label map: only the map leaves the device.
                label_maps.append(scores.argmax(dim=0))
            return {"segmentation": label_maps, "target_size": target_size, "vocabulary": vocabulary}
        groups = padding_groups(model_inputs["image_sizes"].tolist(), self.image_processor.size_divisibility)
        if len(groups) == 1:
            outputs = self.model(**model_inputs, class_embeddings=class_embeddings)
            fields = {name: getattr(outputs, name) for name in MODEL_OUTPUT_FIELDS}
        else:  # sizes too different to pad into one batch: one forward pass per group, lists of per-image tensors
            fields = self._forward_groups(model_inputs, class_embeddings, groups)
        # A plain dict of per-image values (no (N+1, D) text_embeddings: the un-batcher would slice them per image).
        return {**fields, "label_columns": label_columns, "target_size": target_size, "vocabulary": vocabulary}

    def _forward_groups(self, model_inputs: dict, class_embeddings: torch.Tensor, groups: list[list[int]]) -> dict:
        """The batch's groups (`padding_groups`) one forward pass each, each cropped to its own padded size, which
        is exactly the batch the processor makes of that group alone. Returns per-image lists in batch order (the
        pipeline's un-batcher takes entry i of a list as it takes row i of a tensor)."""
        per_image = {name: [None] * len(model_inputs["pixel_values"]) for name in MODEL_OUTPUT_FIELDS}
        for group in groups:
            index = torch.tensor(group)
            inputs = {key: value[index] for key, value in model_inputs.items() if isinstance(value, torch.Tensor)}
            height, width = get_padded_size(inputs["image_sizes"].tolist(), self.image_processor.size_divisibility)
            inputs["pixel_values"] = inputs["pixel_values"][..., :height, :width]
            outputs = self.model(**inputs, class_embeddings=class_embeddings)
            for name in MODEL_OUTPUT_FIELDS:
                for row, position in enumerate(group):
                    per_image[name][position] = getattr(outputs, name)[row]
        return per_image

    def postprocess(
        self, model_outputs, subtask=None, threshold=0.9, mask_threshold=0.5, overlap_mask_area_threshold=0.5
    ):
        if not self.is_open_vocabulary:
            return super().postprocess(
                model_outputs,
                subtask=subtask,
                threshold=threshold,
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
            )
        if subtask in SEGMENT_SUBTASKS:
            return self.segment_annotation(
                model_outputs, subtask, threshold=threshold, mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
            )
        if subtask not in (None, "semantic"):
            raise ValueError(
                f"Subtask {subtask!r} is not supported for model {type(self.model).__name__}; choose one of "
                "'semantic' (the default), 'instance' or 'panoptic'."
            )
        vocabulary = _leaves(model_outputs["vocabulary"])[0]
        # sliding window: (H_out, W_out), a list entry or un-batched (1, H_out, W_out)
        if "segmentation" in model_outputs:
            return semantic_annotation(model_outputs["segmentation"][0], vocabulary.names)
        outputs = image_mask_outputs(model_outputs)
        segmentation = self.image_processor.post_process_semantic_segmentation(
            outputs, target_sizes=model_outputs["target_size"]
        )[0]
        return semantic_annotation(segmentation, vocabulary.names)

    def segment_annotation(self, model_outputs, subtask: str, **thresholds) -> list[dict]:
        """One image's outputs -> one {"score", "label", "mask"} per instance or panoptic segment, best first.

        The processor's `post_process_instance_segmentation` / `post_process_panoptic_segmentation` with the
        pipeline's thresholds; for panoptic, candidate labels that every shipped vocabulary naming them marks as
        "stuff" (`stuff_class_names`) are fused into one segment per class."""
        if "segmentation" in model_outputs:
            raise ValueError(f"subtask={subtask!r} needs the mask proposals; sliding-window inference gives "
                             "the semantic label map only (use subtask='semantic' or no sliding_window).")
        vocabulary = _leaves(model_outputs["vocabulary"])[0]
        outputs = image_mask_outputs(model_outputs)
        target_sizes = _per_image_sizes(model_outputs["target_size"])[:1]
        if subtask == "instance":
            result = self.image_processor.post_process_instance_segmentation(
                outputs, target_sizes=target_sizes, **thresholds
            )[0]
        else:
            stuff = stuff_class_names()
            fuse = {index for index, name in enumerate(vocabulary.names) if name.lower() in stuff}
            result = self.image_processor.post_process_panoptic_segmentation(
                outputs, target_sizes=target_sizes, label_ids_to_fuse=fuse, **thresholds
            )[0]
        segmentation = result["segmentation"].cpu().numpy()
        return [
            {
                "score": segment["score"],
                "label": vocabulary.names[segment["label_id"]],
                "mask": Image.fromarray(((segmentation == segment["id"]) * 255).astype(np.uint8), mode="L"),
            }
            for segment in result["segments_info"]
        ]

    # -- text side -------------------------------------------------------------------------------------------------
    def batch_class_embeddings(self, vocabularies: list[PATVocabulary]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image vocabularies -> ((N, D) embeddings of their union (N classes in all), (B, N + 1) bool columns of
        each image).

        Every distinct vocabulary contributes its rows once. Logits are computed per column, so slicing an image's
        columns (+ the void column, kept last) out of the union logits equals running with its vocabulary alone.
        """
        distinct = list(dict.fromkeys(vocabularies))
        embeddings = [self.class_embeddings(vocabulary) for vocabulary in distinct]
        offsets = np.cumsum([0] + [e.shape[0] for e in embeddings]).tolist()
        union_size = offsets[-1]
        columns = torch.zeros(len(vocabularies), union_size + 1, dtype=torch.bool)
        columns[:, -1] = True  # void
        for row, vocabulary in enumerate(vocabularies):
            index = distinct.index(vocabulary)
            columns[row, offsets[index] : offsets[index + 1]] = True
        return torch.cat(embeddings, dim=0), columns

    def class_embeddings(self, vocabulary: PATVocabulary) -> torch.Tensor:
        """(N, D) unit text embeddings from the model's cache (the text tower runs on a miss only)."""
        if vocabulary.templates == tuple(self.model.config.prompt_templates):
            return self.model.get_class_embeddings(class_names=list(vocabulary.names))
        return self.model.get_class_embeddings(input_ids=self.prompt_input_ids(vocabulary))

    def prompt_input_ids(self, vocabulary: PATVocabulary) -> torch.Tensor:
        """(N, T, 77) ids of a vocabulary with custom templates, on the model's device: tokenised once and kept in
        the model's inference cache (dropped with it, e.g. when the model moves to another device)."""
        key = (vocabulary.names, vocabulary.templates)
        compute = functools.partial(self.model.prompt_input_ids, list(vocabulary.names), list(vocabulary.templates))
        return self.model.inference_cache.get("pipeline.prompt_input_ids", key, compute)

    # -- batching of mixed image sizes -----------------------------------------------------------------------------
    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        """As the base pipeline, but for SAN/PAT batches the collator pads images of different sizes."""
        if batch_size == 1 or not self.is_open_vocabulary:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        if isinstance(inputs, collections.abc.Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:  # an iterable can only be consumed by one worker
            num_workers = min(num_workers, 1)
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(
            dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate_open_vocab_batch
        )
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def image_mask_outputs(model_outputs: dict) -> dict:
    """One image's model outputs as post-processing takes them, its class columns only: the batch's logits cover the
    union of the batch's vocabularies, `label_columns` (N_union + 1,) marks this image's classes and void."""
    columns = model_outputs["label_columns"][0]
    return {
        "class_queries_logits": model_outputs["class_queries_logits"][:, :, columns],
        "masks_queries_logits": model_outputs["masks_queries_logits"],
        "image_sizes": model_outputs["image_sizes"],
        "padded_sizes": model_outputs["padded_sizes"],
    }


def semantic_annotation(segmentation: torch.Tensor, names) -> list[dict]:
    """(H_out, W_out) label map -> one {"score", "label", "mask"} per present class, in class order, `score` None: the
    stock pipeline's semantic entries, so code written for it (e.g. `entry["score"] is None`) runs unchanged."""
    segmentation = segmentation.cpu().numpy()
    annotation = []
    for label in np.unique(segmentation):
        mask = Image.fromarray(((segmentation == label) * 255).astype(np.uint8), mode="L")
        annotation.append({"score": None, "label": names[label], "mask": mask})
    return annotation


def register_pipeline() -> None:
    """Make `pipeline("image-segmentation")` build `PATImageSegmentationPipeline` (for every model; non-PAT models
    behave exactly as with the stock class). Keeps the existing entry's model classes, default and type; idempotent.

    `_registered_impl` is removed afterwards: otherwise `pipe.save_pretrained` of *any* model would write
    `custom_pipelines` into its config.json, and that folder would then need `trust_remote_code=True` to load.
    """
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    if entry.get("impl") is PATImageSegmentationPipeline:
        return
    registry_logger = logging.getLogger("transformers.pipelines.base")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)  # silence "already registered. Overwriting" on every import
    try:
        PIPELINE_REGISTRY.register_pipeline(
            TASK,
            pipeline_class=PATImageSegmentationPipeline,
            pt_model=entry.get("pt"),
            default=entry.get("default"),
            type=entry.get("type"),
        )
    finally:
        registry_logger.setLevel(level)
    if "_registered_impl" in vars(PATImageSegmentationPipeline):
        del PATImageSegmentationPipeline._registered_impl


__all__ = [
    "PATImageSegmentationPipeline",
    "PATVocabulary",
    "collate_open_vocab_batch",
    "normalize_candidate_labels",
    "register_pipeline",
]
