"""PATImageProcessor: SAN / PAT test-time resize, CLIP normalisation, padding, label maps, and the `post_process_*`
methods.

The processor's pieces live in three flat modules: `image_loading` (sources, the one RGB normalisation, input
checks and layout), `post_processing` (mask-logit resizing, semantic label maps, output checks) and this one (the
processor class, its resize / padding rules and batching). Names other code imported from here before the split are
re-exported below.

Shapes (the symbols of `modeling_pat.modeling_pat`): `pixel_values` [B, 3, H_img, W_img] (padded); label maps
[height, width] of class ids; post-processing as in `post_processing` (class logits [B, Q, N + 1], mask logits
[B, Q, H_s, W_s], label maps [H_out, W_out]).
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import group_images_by_shape, reorder_images
from transformers.image_utils import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
)
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_loading import (  # noqa: F401 (re-exported: importable from here before the split)
    as_label_list,
    convert_image_to_rgb,
    flatten_images,
    infer_channel_layout,
    label_map_to_tensor,
    load_image,
    normalize_rgb,
    prepare_image,
    upright,
)
from .mask_segments import instance_segments, panoptic_segments
from .post_processing import (  # noqa: F401 (re-exported: importable from here before the split)
    CPU_BAND_PIXELS,
    DEVICE_BAND_ELEMENTS,
    DEVICE_PRUNE_MIN_CLASSES,
    PRUNE_MIN_CLASSES,
    ResizeRows,
    mask_outputs,
    mask_proposals,
    mask_resize_matrix,
    mask_resize_rows,
    output_field,
    resize_mask_logits,
    semantic_map,
    size_at,
    size_rows,
)


try:
    import PIL.Image
except ImportError:  # PIL is optional for images given as arrays or tensors
    PIL = None


class PATImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    size_divisibility (`int`, *optional*, defaults to 32):
        The padded height and width are rounded up to a multiple of this (SAN's `SIZE_DIVISIBILITY`); 0 or 1 = none.
    ignore_index (`int`, *optional*, defaults to 255):
        Label value that is never a class: used to pad label maps and as the target of `do_reduce_labels`' 0.
    do_reduce_labels (`bool`, *optional*, defaults to `False`):
        ADE20K convention: label 0 ("other") becomes `ignore_index` and every other value v becomes v - 1.
    """

    size_divisibility: int
    ignore_index: int
    do_reduce_labels: bool


def get_resize_output_size(
    height: int, width: int, shortest_edge: int, longest_edge: int | None = None
) -> tuple[int, int]:
    """(height, width) after SAN's test resize (detectron2 ResizeShortestEdge): short side = shortest_edge, long
    side capped."""
    scale = shortest_edge / min(height, width)
    if height < width:
        new_height, new_width = float(shortest_edge), scale * width
    else:
        new_height, new_width = scale * height, float(shortest_edge)
    if longest_edge is not None and max(new_height, new_width) > longest_edge:
        cap = longest_edge / max(new_height, new_width)
        new_height, new_width = new_height * cap, new_width * cap
    # Round half up, as detectron2 does; transformers' get_size_with_aspect_ratio truncates (683x512 -> 853 vs 854).
    # At least 1 pixel: a very thin image (e.g. 1 x 10000) would otherwise round its short side to 0.
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def get_padded_size(sizes: Sequence[Sequence[int]], size_divisibility: int = 32) -> tuple[int, int]:
    """Padded (H_img, W_img) of a batch: the largest height and width, each rounded up to a multiple of
    `size_divisibility`."""
    height = max(int(s[0]) for s in sizes)
    width = max(int(s[1]) for s in sizes)
    if size_divisibility and size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    return height, width


# `padding_groups` splits a batch when one padded batch costs more than this many times its images padded alone.
MAX_PADDING_OVERHEAD = 1.5


def padding_groups(
    image_sizes: Sequence[Sequence[int]], size_divisibility: int = 32, max_overhead: float = MAX_PADDING_OVERHEAD
) -> list[list[int]]:
    """Indices of a batch's images, in groups that are padded and run together.

    A batch padded to its largest height and width costs `B x H_img x W_img` pixels of model input: one very wide
    image among small ones makes every other image as wide. Images are taken in order of their padded (height,
    width) and join the current group while its padded cost stays within `max_overhead` times the sum of its
    images' own padded sizes (at most a third of its pixels padding with the default 1.5); otherwise they start a
    new group. A batch of similar sizes stays one group (in its order), so the common case runs exactly as before."""
    padded = [get_padded_size([size], size_divisibility) for size in image_sizes]
    order = sorted(range(len(padded)), key=lambda i: (padded[i], i))
    groups, current, own_pixels = [], [], 0
    for index in order:
        height, width = get_padded_size([padded[i] for i in current + [index]], 1)
        pixels = own_pixels + padded[index][0] * padded[index][1]
        if current and (len(current) + 1) * height * width > max_overhead * pixels:
            groups.append(current)
            current, pixels = [], padded[index][0] * padded[index][1]
        current.append(index)
        own_pixels = pixels
    if current:
        groups.append(current)
    if len(groups) == 1:
        return [list(range(len(padded)))]
    return [sorted(group) for group in groups]


def reduce_labels(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """[height, width] int -> the same shape: 0 -> ignore_index, v -> v - 1, ignore_index kept (ADE20K's
    reduce_zero_label)."""
    reduced = torch.where(label == 0, torch.full_like(label, ignore_index), label - 1)
    return torch.where(label == ignore_index, label, reduced)


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[height, width] int64 -> `size` int64 by nearest-exact sampling: input row floor((y + 0.5) * height /
    size[0]) (pixel centres), columns alike."""
    if tuple(label.shape) == tuple(size):
        return label
    # float32 holds every integer up to 2**24 exactly, far beyond any class id.
    resized = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].round().to(torch.int64)


# Subclasses the 5.x torchvision backend: it supplies input conversion (PIL / numpy / torch, RGB conversion,
# channels-first, device placement), saving and kwargs handling; SAN's rounding, arithmetic order and padding need
# only `resize`, `rescale_and_normalize` and `_preprocess` to be overridden.
class PATImageProcessor(TorchvisionBackend):
    r"""
    Image processor for SAN / PAT: detectron2-style shortest-edge resize (640, long edge <= 2560, bilinear), CLIP
    normalisation, zero padding at the bottom/right (after normalisation) to a multiple of `size_divisibility`, and
    label maps resized with nearest-exact and padded with `ignore_index`.

    Returns `pixel_values` float32 [B, 3, H_img, W_img], `image_sizes` int64 [B, 2] (resized, unpadded height and
    width), `original_sizes` int64 [B, 2] (input height and width) and, with `segmentation_maps`, `labels` int64
    [B, H_img, W_img].
    A batch is padded to its largest image; callers that batch images of any size split them first with
    `padding_groups` (planned from `resized_size`), as the pipeline and `pat-segment` do.
    """

    valid_kwargs = PATImageProcessorKwargs
    model_input_names = ["pixel_values"]

    resample = PILImageResampling.BILINEAR
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"shortest_edge": 640, "longest_edge": 2560}
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_pad = True
    do_convert_rgb = True
    size_divisibility = 32
    ignore_index = 255
    do_reduce_labels = False

    def __init__(self, **kwargs: Unpack[PATImageProcessorKwargs]):
        super().__init__(**kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[PATImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        images (`ImageInput`):
            One image or a list (PIL, file path / URL, numpy HWC/CHW, torch CHW; uint8 0..255, uint16 0..65535 or
            float on the 0..255 scale); sizes may differ. Files and PIL images go through `normalize_rgb` (first
            frame, upright by EXIF orientation, RGB with 16-bit scaled and transparency over white). NaN / inf values,
            integers outside 0..255 and channel counts other than 1, 3 or 4 are errors. Without `input_data_format`,
            a last axis of 3 or 4 is the channel axis (numpy's HWC: (1, 65535, 3) is a one-pixel-high RGB strip),
            else a first axis of 1, 3 or 4 (`infer_channel_layout`); shapes both readings fit give a warning.
        segmentation_maps (`ImageInput`, *optional*):
            One label map per image (PIL, numpy or torch [height, width]), same size as its image.
        """
        do_convert_rgb = kwargs.get("do_convert_rgb")
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        do_rescale = self.do_rescale if kwargs.get("do_rescale") is None else kwargs["do_rescale"]
        input_data_format = kwargs.get("input_data_format")
        images = [
            prepare_image(image, index, do_convert_rgb, do_rescale, input_data_format)
            for index, image in enumerate(flatten_images(images))
        ]
        # Arrays and tensors are channels first now (`channels_first`); PIL images are read channels last anyway.
        kwargs["input_data_format"] = ChannelDimension.FIRST
        kwargs.setdefault("return_tensors", "pt")
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        do_convert_rgb: bool,
        input_data_format,
        device=None,
        **kwargs,
    ) -> BatchFeature:
        """Convert raw inputs to channels-first tensors, check them, then run `_preprocess`."""
        images = self._prepare_image_like_inputs(
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device
        )
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"`images[{index}]` must have 3 (RGB) channels after conversion, got shape {tuple(image.shape)}; "
                    "pass do_convert_rgb=True for grayscale or RGBA inputs."
                )
        labels = None
        if segmentation_maps is not None:
            labels = [label_map_to_tensor(m, i) for i, m in enumerate(as_label_list(segmentation_maps))]
            if len(labels) != len(images):
                raise ValueError(
                    f"Got {len(images)} images but {len(labels)} `segmentation_maps`; pass one per image."
                )
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                if tuple(label.shape) != tuple(image.shape[-2:]):
                    raise ValueError(
                        f"`segmentation_maps[{index}]` has size {tuple(label.shape)} but `images[{index}]` has size "
                        f"{tuple(image.shape[-2:])}."
                    )
            if device is not None:
                labels = [label.to(device) for label in labels]
        return self._preprocess(images, labels, **kwargs)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
        """One image -> [channels, height, width] tensor on `device`. Host images go up as they are (uint8, channels
        last): the channels-first copy, like everything after it, then runs on the device, and the host only uploads."""
        if device is not None and PIL is not None and isinstance(image, PIL.Image.Image):
            image = normalize_rgb(image, to_rgb=bool(do_convert_rgb))  # done by `preprocess`; for direct calls
            image = np.array(image)
            input_data_format = ChannelDimension.LAST if image.ndim == 3 else input_data_format
        if device is not None and isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        if device is not None and isinstance(image, torch.Tensor):
            image = image.to(device)
        return super().process_image(image, do_convert_rgb, input_data_format, device, **kwargs)

    def resize(
        self, image: torch.Tensor, size: SizeDict, resample=None, antialias: bool = True, **kwargs
    ) -> torch.Tensor:
        """[..., channels, height, width] -> the new height and width; `shortest_edge` sizes use detectron2 rounding
        (get_resize_output_size)."""
        height, width = image.shape[-2:]
        if size.shortest_edge:
            new_size = get_resize_output_size(height, width, size.shortest_edge, size.longest_edge)
            if new_size == (height, width):
                return image
            size = SizeDict(height=new_size[0], width=new_size[1])
        return super().resize(image, size, resample=resample, antialias=antialias, **kwargs)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) `preprocess` resizes a (height, width) image to with this processor's settings, before
        padding: what a caller needs to plan batches (`padding_groups`) without preprocessing first."""
        if not self.do_resize:
            return int(height), int(width)
        size = self.size if isinstance(self.size, SizeDict) else SizeDict(**self.size)
        if size.shortest_edge:
            return get_resize_output_size(height, width, size.shortest_edge, size.longest_edge)
        return int(size.height), int(size.width)

    def rescale_and_normalize(
        self,
        images: torch.Tensor,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, C, H, W] -> float32; rescale + normalise is (x - mean / rescale_factor) / (std / rescale_factor).

        With `out` (a float32 tensor of the images' shape, e.g. an image's slot in the padded batch) the result is
        written there: the batch is then filled in place, with no per-image float copy, padding copy or stack.
        """
        if images.is_floating_point() and images.dtype != torch.float32:
            images = images.to(torch.float32)  # integers and float32 enter the float32 subtraction as they are
        if do_normalize:
            # SAN normalises 0..255 values with 255 * mean and 255 * std, computed in float64 and stored as float32;
            # folding the rescale into the constants this way reproduces its float32 results bit for bit.
            scale = 1.0 / rescale_factor if do_rescale else 1.0
            num_channels = images.shape[-3]
            mean = torch.tensor(_per_channel(image_mean, num_channels), dtype=torch.float64) * scale
            std = torch.tensor(_per_channel(image_std, num_channels), dtype=torch.float64) * scale
            mean = mean.to(torch.float32, copy=False).view(-1, 1, 1).to(images.device)
            std = std.to(torch.float32, copy=False).view(-1, 1, 1).to(images.device)
            return torch.sub(images, mean, out=out).div_(std)
        if out is None:
            out = images.to(torch.float32, copy=True)
        else:
            out.copy_(images)
        return out.mul_(rescale_factor) if do_rescale else out

    def _preprocess(
        self,
        images: list[torch.Tensor],
        labels: list[torch.Tensor] | None,
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad: bool,
        pad_size: SizeDict | None,
        size_divisibility: int,
        ignore_index: int,
        do_reduce_labels: bool,
        disable_grouping: bool | None,
        return_tensors,
        **kwargs,
    ) -> BatchFeature:
        """Resize, normalise and pad [3, height, width] images (and their label maps) into one batch.

        Every step is torch ops on the images' own device: given `device`, the images are uploaded as they come
        (uint8) and resized, normalised and padded there; the host path is the same code on the CPU.
        """
        original_sizes = [tuple(image.shape[-2:]) for image in images]

        if do_resize:
            grouped, index = group_images_by_shape(images, disable_grouping=disable_grouping)
            resized = {shape: self.resize(stacked, size=size, resample=resample) for shape, stacked in grouped.items()}
            images = reorder_images(resized, index)
        image_sizes = [tuple(image.shape[-2:]) for image in images]
        normalise = (do_rescale, rescale_factor, do_normalize, image_mean, image_std)

        if labels is not None:
            if do_reduce_labels:
                labels = [reduce_labels(label, ignore_index) for label in labels]
            labels = [resize_label(label, image_size) for label, image_size in zip(labels, image_sizes, strict=True)]

        if do_pad:
            padded_size = self._padded_size(image_sizes, pad_size, size_divisibility)
            # One zero-filled batch, each image normalised straight into its top-left slot (the zeros are the
            # padding, which comes after normalisation): one float pass per pixel instead of four copies.
            batch = images[0].new_zeros((len(images), images[0].shape[0], *padded_size), dtype=torch.float32)
            for slot, image in zip(batch, images, strict=True):
                self.rescale_and_normalize(image, *normalise, out=slot[:, : image.shape[-2], : image.shape[-1]])
            images = batch if return_tensors is not None else list(batch)
            if labels is not None:
                labels = [pad_bottom_right(label, padded_size, ignore_index) for label in labels]
        else:
            images = [self.rescale_and_normalize(image[None], *normalise)[0] for image in images]

        data = {"pixel_values": images, "image_sizes": image_sizes, "original_sizes": original_sizes}
        if labels is not None:
            data["labels"] = labels
        return _to_batch_feature(data, return_tensors)

    @staticmethod
    def _padded_size(image_sizes, pad_size: SizeDict | None, size_divisibility: int) -> tuple[int, int]:
        """The batch's padded (H_img, W_img): `pad_size` if given (must fit every image), else get_padded_size."""
        if pad_size is None:
            return get_padded_size(image_sizes, size_divisibility)
        if not (pad_size.height and pad_size.width):
            raise ValueError(f"`pad_size` must have 'height' and 'width', got {dict(pad_size)}.")
        largest = get_padded_size(image_sizes, 1)
        if largest[0] > pad_size.height or largest[1] > pad_size.width:
            raise ValueError(f"`pad_size` {dict(pad_size)} is smaller than the largest resized image {largest}.")
        return pad_size.height, pad_size.width

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_segmentation_scores: bool = False,
    ) -> "list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]":
        """
        Turn model outputs into per-image semantic maps (`semantic_map`: by bands of rows, argmax in cache, classes
        pruned by exact bounds where that pays; the scores only when asked for).

        Args:
            outputs: a model output (or dict) with `class_queries_logits` [B, Q, N + 1] (last column = void),
                `masks_queries_logits` [B, Q, H_s, W_s] and optionally `image_sizes` [B, 2] (resized, unpadded
                height and width inside the padded input) and `padded_sizes` [B, 2] (H_img, W_img). Without
                `padded_sizes` the padded size is rebuilt as the largest `image_sizes` rounded up to
                `self.size_divisibility` (what `preprocess` does unless `pad_size` was given). Without `image_sizes`
                nothing is cropped: the masks are taken to cover the whole image and are only resized to
                `target_sizes`.
            target_sizes: (H_out, W_out) per image, e.g. the processor's `original_sizes`; None keeps the cropped
                size.
            return_segmentation_scores: also return the [N, H_out, W_out] scores.

        Returns:
            A list of LongTensor [H_out, W_out] class maps, or with `return_segmentation_scores=True` a list of
            `SemanticSegmentationPostProcessorOutput` with `segmentation` and float32 [N, H_out, W_out]
            `segmentation_scores`.
        """
        class_logits, mask_logits = mask_outputs(outputs, target_sizes)
        batch_size = class_logits.shape[0]
        results = []
        for i, sizes in enumerate(self._post_processing_sizes(outputs, target_sizes, batch_size)):
            computed = semantic_map(class_logits[i], mask_logits[i], **sizes, return_scores=return_segmentation_scores)
            if return_segmentation_scores:
                results.append(SemanticSegmentationPostProcessorOutput(data=computed))
            else:
                results.append(computed["segmentation"])
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_binary_maps: bool = False,
    ) -> list[dict]:
        """
        Turn model outputs into per-image instance segments (Mask2Former's format and instance inference).

        Args:
            outputs: as for `post_process_semantic_segmentation` (`class_queries_logits`, `masks_queries_logits`,
                optionally `image_sizes` / `padded_sizes` to crop the padding).
            threshold: the least score a segment needs; score = p(class) * mean mask probability inside the mask
                (see `modeling_pat.mask_segments`).
            mask_threshold: mask probabilities above this make a segment's binary mask.
            overlap_mask_area_threshold: a segment is dropped unless more than this share of its mask remains
                once better segments took their pixels.
            target_sizes: (H_out, W_out) per image, e.g. the processor's `original_sizes`; None keeps the cropped
                size.
            return_binary_maps: `segmentation` is then a bool (Q_k, H_out, W_out) tensor (Q_k kept segments),
                segment i + 1's whole mask in row i (masks may overlap there), instead of the id map.

        Returns:
            Per image a dict: `segmentation`, an int64 (H_out, W_out) map of segment ids (0 = no segment), and
            `segments_info`, best score first: `{"id", "label_id", "score", "was_fused" (False), "area" (pixels
            in the id map), "query_index"}`.
        """
        return [
            instance_segments(
                class_logits, masks_at, size, threshold, mask_threshold, overlap_mask_area_threshold,
                return_binary_maps,
            )
            for class_logits, masks_at, size in self._mask_proposals(outputs, target_sizes)
        ]

    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: "set[int] | None" = None,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
    ) -> list[dict]:
        """
        Turn model outputs into per-image panoptic segments (Mask2Former's format and panoptic inference).

        Args:
            outputs, mask_threshold, overlap_mask_area_threshold, target_sizes: as in
                `post_process_instance_segmentation`.
            threshold: a query makes a segment when its most likely column is a class, not void, with a probability
                above this.
            label_ids_to_fuse: "stuff" classes, one segment per class (e.g. a shipped vocabulary's
                `stuff_class_ids` from `load_vocabulary`); default none.

        Returns:
            Per image a dict: `segmentation`, an int64 (H_out, W_out) map of segment ids (0 = no segment), and
            `segments_info`, best score first: `{"id", "label_id", "score", "was_fused", "area", "query_index"}`.
        """
        return [
            panoptic_segments(
                class_logits, masks_at, size, threshold, mask_threshold, overlap_mask_area_threshold,
                label_ids_to_fuse,
            )
            for class_logits, masks_at, size in self._mask_proposals(outputs, target_sizes)
        ]

    def _post_processing_sizes(self, outputs, target_sizes, batch_size: int) -> list[dict]:
        """Per image: the `padded_size`, `image_size` and `output_size` of `resize_mask_logits`, as host ints. Each
        size table is read once; tables on the host (the processor's, the model's `padded_sizes`) cost no wait for
        the device."""
        given_image_sizes = output_field(outputs, "image_sizes")
        image_sizes = size_rows(given_image_sizes, batch_size)
        padded_sizes = output_field(outputs, "padded_sizes")
        if padded_sizes is None and given_image_sizes is not None:
            padded_sizes = get_padded_size(image_sizes, self.size_divisibility)
        padded_sizes = size_rows(padded_sizes, batch_size)
        output_sizes = size_rows(target_sizes, batch_size)
        return [{"padded_size": padded, "image_size": image, "output_size": output}
                for padded, image, output in zip(padded_sizes, image_sizes, output_sizes)]

    def _mask_proposals(self, outputs, target_sizes):
        """`mask_proposals` of the outputs, with the sizes semantic post-processing uses."""
        class_logits, mask_logits = mask_outputs(outputs, target_sizes)
        sizes = self._post_processing_sizes(outputs, target_sizes, class_logits.shape[0])
        return mask_proposals(class_logits, mask_logits, sizes)


def _per_channel(values, num_channels: int) -> list[float]:
    """A scalar or per-channel sequence -> list of `num_channels` floats."""
    if isinstance(values, int | float):
        return [float(values)] * num_channels
    values = [float(v) for v in values]
    if len(values) != num_channels:
        raise ValueError(f"`image_mean` / `image_std` have {len(values)} values for {num_channels} channels.")
    return values


def pad_bottom_right(tensor: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """[..., height, width] -> [..., *size], the new rows and columns at the bottom/right filled with `value`."""
    pad_height = size[0] - tensor.shape[-2]
    pad_width = size[1] - tensor.shape[-1]
    if pad_height == 0 and pad_width == 0:
        return tensor
    return F.pad(tensor, (0, pad_width, 0, pad_height), value=value)


def _to_batch_feature(data: dict, return_tensors) -> BatchFeature:
    """Stack per-image tensors and size lists for return_tensors "pt" (or "np"); keep lists otherwise."""
    if return_tensors is None:
        return BatchFeature(data=data)
    stacked = {}
    for key, value in data.items():
        if key.endswith("_sizes"):
            stacked[key] = torch.tensor(value, dtype=torch.int64).reshape(-1, 2)
            continue
        if isinstance(value, torch.Tensor):  # already one batch tensor
            stacked[key] = value
            continue
        shapes = {tuple(v.shape) for v in value}
        if len(shapes) > 1:
            raise ValueError(
                f"Cannot stack `{key}` of different sizes {sorted(shapes)} into one tensor; use do_pad=True "
                "(or return_tensors=None for lists)."
            )
        stacked[key] = torch.stack(value)
    return BatchFeature(data=stacked, tensor_type=return_tensors)


__all__ = [
    "PATImageProcessor",
    "convert_image_to_rgb",
    "get_padded_size",
    "get_resize_output_size",
    "load_image",
    "mask_resize_rows",
    "normalize_rgb",
    "padding_groups",
    "reduce_labels",
    "resize_mask_logits",
    "semantic_map",
]
