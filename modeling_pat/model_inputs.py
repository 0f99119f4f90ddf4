"""Checks of the model's inputs where they enter `forward`: clear errors naming the input, the expected and the
actual shape or dtype, instead of a failure deep inside a layer. Value checks (NaN, id ranges) run on host tensors
only: on an accelerator they would make every forward wait for the device. Shapes in `modeling_pat.py`'s symbols."""

import torch

from .configuration_pat import PATConfig


def prepare_pixel_values(pixel_values: torch.Tensor, size_divisibility: int, dtype: torch.dtype) -> torch.Tensor:
    """Checked images in the model's dtype: clear errors instead of a shape or dtype error deep inside a conv.

    Shape and dtype are checked everywhere; a float tensor of another dtype (fp64 from numpy, fp32 into a bf16
    model) is cast to `dtype`, as the pipeline and the CLI do; integer images are refused (they are not normalised).
    The finiteness check reads the values, so it runs on CPU tensors only: on an accelerator it would make every
    forward wait for the device. Images that reach the model through the processor, the pipeline or the CLI were
    checked on the host there.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, 3, height, width), got {tuple(pixel_values.shape)}; "
            "use PATImageProcessor to prepare images."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"`pixel_values` must be a float tensor of normalised images (the model runs in {dtype}), got "
            f"{pixel_values.dtype}; use PATImageProcessor to prepare images."
        )
    height, width = pixel_values.shape[-2:]
    if height == 0 or width == 0 or height % size_divisibility or width % size_divisibility:
        raise ValueError(
            f"`pixel_values` height and width ({height}, {width}) must be positive multiples of size_divisibility="
            f"{size_divisibility}; pad them (PATImageProcessor does)."
        )
    if is_host_tensor(pixel_values) and not bool(torch.isfinite(pixel_values).all()):
        raise ValueError("`pixel_values` contains NaN or infinite values; check the images and their preprocessing.")
    return pixel_values.to(dtype)


def check_class_embeddings(class_embeddings: torch.Tensor, embed_dim: int) -> None:
    """(N, D) float embeddings with N >= 1 and D = CLIP's embedding dim; finite when on the CPU (see
    `prepare_pixel_values`). Any float dtype is accepted: the classifier casts them to fp32."""
    if not isinstance(class_embeddings, torch.Tensor):
        raise TypeError(f"`class_embeddings` must be a torch.Tensor, got {type(class_embeddings).__name__}.")
    if not class_embeddings.is_floating_point():
        raise TypeError(
            f"`class_embeddings` must be a float tensor (the classifier runs in {torch.float32}), got "
            f"{class_embeddings.dtype}; compute them with `model.get_class_embeddings`."
        )
    if class_embeddings.ndim != 2 or class_embeddings.shape[0] == 0 or class_embeddings.shape[1] != embed_dim:
        raise ValueError(
            f"`class_embeddings` must have shape (num_classes >= 1, {embed_dim}), got {tuple(class_embeddings.shape)}; "
            "compute them with `model.get_class_embeddings`."
        )
    if is_host_tensor(class_embeddings) and not bool(torch.isfinite(class_embeddings).all()):
        bad = (~torch.isfinite(class_embeddings).all(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"`class_embeddings` contains NaN or infinite values (rows {bad[:10]}{' ...' if len(bad) > 10 else ''}); "
            "compute them with `model.get_class_embeddings`."
        )


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, context_length: int) -> None:
    """(N, T, context length) integer token ids, at most CLIP's context long; ids within the vocabulary when on the
    CPU (an id outside it is an IndexError deep in the embedding on the CPU, a device-side assert on a GPU)."""
    if (
        not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 3 or 0 in input_ids.shape
        or input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool
    ):
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(
            "`input_ids` must be integer token ids of shape (num_classes, num_templates, seq_len), each at least 1, "
            f"got {getattr(input_ids, 'dtype', '')} {shape}; use PATProcessor(text=[...])."
        )
    if input_ids.shape[-1] > context_length:
        raise ValueError(
            f"`input_ids` are {input_ids.shape[-1]} tokens long; CLIP's text context holds {context_length}."
        )
    if is_host_tensor(input_ids):
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"`input_ids` must lie in [0, {vocab_size - 1}] (CLIP's vocabulary), got values in [{low}, {high}]."
            )


def check_labels(labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
    """Label maps must be (B, H_img, W_img) integer maps at the padded input size (the image processor pads them)."""
    expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != expected:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a tensor of shape (batch_size, height, width) = {expected}, got {shape}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`labels` must hold integer class ids (torch.long), got {labels.dtype}.")


def check_sizes(sizes: torch.Tensor | None, name: str, batch_size: int) -> None:
    """`image_sizes` / `original_sizes`: integer (batch_size, 2) rows of (height, width), as the processor gives."""
    if sizes is None:
        return
    if not isinstance(sizes, torch.Tensor) or sizes.is_floating_point() or tuple(sizes.shape) != (batch_size, 2):
        found = f"{sizes.dtype} {tuple(sizes.shape)}" if isinstance(sizes, torch.Tensor) else type(sizes).__name__
        raise ValueError(
            f"`{name}` must be an integer tensor of shape (batch_size, 2) = ({batch_size}, 2), got {found}."
        )


def refuse_attention_weights(output_attentions: bool | None, config: PATConfig) -> None:
    """A ValueError for `output_attentions=True` (or the config's): SDPA, the only attention, returns no weights."""
    if output_attentions or (output_attentions is None and getattr(config, "output_attentions", False)):
        raise ValueError(
            "output_attentions=True is not supported: the model's attention runs torch's "
            "scaled_dot_product_attention (attn_implementation='sdpa'), which does not return attention weights."
        )


def is_host_tensor(tensor: torch.Tensor) -> bool:
    """Whether a value check is free of device synchronisation (and of graph breaks while torch.compile traces)."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()


def valid_pixel_mask(pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> torch.Tensor:
    """(B, 1, H_img, W_img) float mask of the real (unpadded) pixels of each image; all ones without `image_sizes`."""
    batch, _, height, width = pixel_values.shape
    if image_sizes is None:
        return pixel_values.new_ones(batch, 1, height, width)
    # compared on the device: reading the sizes back would make every training step wait for it
    sizes = image_sizes.to(pixel_values.device)
    rows = torch.arange(height, device=pixel_values.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(width, device=pixel_values.device)[None, None, :] < sizes[:, 1, None, None]
    return (rows & cols)[:, None].to(pixel_values.dtype)
