"""PAT's tokenization losses (choices SA1, RL1): VQ, spatial alignment, reconstruction.

    L_tok = vq_loss_weight * L_VQ + spatial_alignment_weight * L_SA + reconstruction_weight * L_rec
    L_VQ  = sum over the codebooks (early, mid, late, latent) of the quantizer losses (computed by the quantizer)
    L_SA  = sum over s in (early, mid, late) of CRF(x_s, z_q,s) + TV(z_q,s)        (inner weights 1:1, SA1)
    L_rec = mse_weight * MSE + l1_weight * L1 + perceptual_weight * perceptual     (on [0, 1] images, RL1)

The segmentation loss (SAN's criterion) lives in `segmentation_loss.py`; the model adds both.

Shapes in the symbols of `modeling_pat.py`'s table: B, code maps z_q (B, C_code, H_s, W_s) per stage s, images
(B, 3, H_img, W_img), P sampled pixels of the CRF, F feature layers of the perceptual network.

Conventions of the CRF, checked against FeatUp's `SampledCRFLoss` (featup/losses.py):
* P pixels are drawn uniformly with replacement, one set shared by the whole batch. FeatUp draws rows and columns
  with two `randint` calls; a flat index `randint(0, H * W)` has the same distribution.
* Positions are (row / H, col / W), as in FeatUp (pixel index over size, no half-pixel offset; only differences
  enter the kernel, so the offset would cancel anyway).
* The colour distance is taken on the normalised image, as FeatUp does; FeatUp's guidance is ImageNet-normalised,
  ours is the model input (CLIP mean/std), area-resized to the feature grid. CLIP's std (~0.27) is a little wider
  than ImageNet's (~0.226), so the same photo gives ~0.7x FeatUp's squared colour distances.
* The loss is the mean over (B, P, P), the diagonal included.
* Deviation: squared distances use the Gram form |a|^2 + |b|^2 - 2 a.b, so memory is O(B P^2) rather than the
  O(B C_code P^2) of FeatUp's broadcast difference (1.5 GB per stage for B = 12, C_code = 32, P = 1000).
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .configuration_pat import PATConfig
from .constants import PYRAMID_STAGES
from .weights_files import torch_load_weights


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# end index (exclusive) in torchvision's `vgg16().features` of each LPIPS layer: relu1_2 ... relu5_3
VGG16_LAYER_ENDS = {"relu1_2": 4, "relu2_2": 9, "relu3_3": 16, "relu4_3": 23, "relu5_3": 30}


# ---------------------------------------------------------------------------------------------------------------------
# Spatial alignment: FeatUp's sampled CRF and a total-variation term


def pairwise_squared_distances(points: torch.Tensor) -> torch.Tensor:
    """(B, channels, P) -> (B, P, P) squared Euclidean distances, Gram form, clamped at 0 against round-off."""
    # centring changes no distance but shrinks |a|^2 + |b|^2 - 2 a.b's cancellation error (exact 0 for equal points)
    points = points - points.mean(-1, keepdim=True)
    squared_norms = points.square().sum(1)  # (B, P)
    # autocast would run the einsum in half precision, and the cancellation would then lose ~3 digits
    with torch.autocast(device_type=points.device.type, enabled=False):
        gram = torch.einsum("bci,bcj->bij", points, points)
    return (squared_norms[:, :, None] + squared_norms[:, None, :] - 2 * gram).clamp_min(0)


def sample_pixel_indices(num_pixels: int, num_samples: int, generator=None, device=None) -> torch.Tensor:
    """(P,) flat pixel indices drawn uniformly with replacement (on the generator's device, then moved; without a
    generator on `device`, so that a GPU step neither draws on the host nor copies the indices up)."""
    generator_device = generator.device if generator is not None else (device or "cpu")
    indices = torch.randint(0, num_pixels, (num_samples,), generator=generator, device=generator_device)
    return indices.to(device)


def crf_kernel(positions, colours, alpha, beta, gamma, w1, w2, shift) -> torch.Tensor:
    """(1, 2, P) positions in [0, 1], (B, 3, P) colours -> (B, P, P) appearance + smoothness kernel."""
    position_distances = pairwise_squared_distances(positions)  # (1, P, P)
    colour_distances = pairwise_squared_distances(colours)  # (B, P, P)
    appearance = w1 * torch.exp(-position_distances / (2 * alpha) - colour_distances / (2 * beta))
    smoothness = w2 * torch.exp(-position_distances / (2 * gamma))
    return appearance + smoothness - shift


def crf_loss(
    image: torch.Tensor,
    features: torch.Tensor,
    num_samples: int = 1000,
    alpha: float = 0.1,
    beta: float = 0.15,
    gamma: float = 0.005,
    w1: float = 10.0,
    w2: float = 3.0,
    shift: float = 0.0,
    generator: torch.Generator | None = None,
    sample_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, 3, H_s, W_s) normalised image, (B, C_code, H_s, W_s) codes -> scalar mean over (B, P, P) of
    K_ij * |f_i - f_j|^2.

    `sample_indices` (P,) flat indices into H_s * W_s replace the random draw (tests, parity) and `num_samples`.
    """
    if image.shape[0] != features.shape[0] or image.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and features {tuple(features.shape)} must share B, H and W.")
    height, width = features.shape[-2:]
    if sample_indices is None:
        sample_indices = sample_pixel_indices(height * width, num_samples, generator, features.device)
    sample_indices = sample_indices.to(features.device)
    rows, cols = sample_indices // width, sample_indices % width
    positions = torch.stack([rows / height, cols / width]).float()[None]  # (1, 2, P)
    # the kernel and distances run in fp32 even under autocast: exp() of large negative numbers
    colours = _fp32(image.flatten(2)[:, :, sample_indices])  # (B, 3, P)
    values = _fp32(features.flatten(2)[:, :, sample_indices])  # (B, C_code, P)
    kernel = crf_kernel(positions, colours, alpha, beta, gamma, w1, w2, shift)
    return (kernel * pairwise_squared_distances(values)).mean()


def tv_loss(features: torch.Tensor) -> torch.Tensor:
    """(B, C_code, H_s, W_s) -> scalar (sum (d_y f)^2 + sum (d_x f)^2) / (B C_code H_s W_s), on the features themselves.

    FeatUp's `TVLoss` formula; FeatUp's trainer feeds it the feature magnitude, which is constant for PAT's unit
    codes, so here it acts on z_q directly (choice SA1).
    """
    batch, channels, height, width = features.shape
    features = _fp32(features)
    vertical = (features[:, :, 1:, :] - features[:, :, :-1, :]).square().sum()
    horizontal = (features[:, :, :, 1:] - features[:, :, :, :-1]).square().sum()
    return (vertical + horizontal) / (batch * channels * height * width)


def area_resize(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, 3, H_img, W_img) -> (B, 3, H_s, W_s) by area averaging.

    `F.interpolate(mode="area")` is `adaptive_avg_pool2d`, which also handles non-integer ratios (e.g. 864 -> 54).
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.adaptive_avg_pool2d(image, tuple(size))


def spatial_alignment_loss(
    image: torch.Tensor,
    quantized: dict[str, torch.Tensor],
    num_samples: int = 1000,
    generator: torch.Generator | None = None,
    sample_indices: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, 3, H_img, W_img) normalised image, {stage: (B, C_code, H_s, W_s)} -> (sum, {"loss_crf_<stage>",
    "loss_tv_<stage>"}).

    Inner weights 1:1 (SA1), so the dict values sum to the total. Stages draw their pixels in dict order;
    `sample_indices` {stage: (P,)} replaces those draws. Padded pixels can be drawn too (as in FeatUp, which has
    no padding): their colour is the normalised 0, so they mostly pair with each other through the colour kernel.
    """
    terms = {}
    for stage, stage_features in quantized.items():
        guide = area_resize(image, stage_features.shape[-2:])
        indices = sample_indices.get(stage) if sample_indices is not None else None
        terms[f"loss_crf_{stage}"] = crf_loss(
            guide, stage_features, num_samples, generator=generator, sample_indices=indices
        )
        terms[f"loss_tv_{stage}"] = tv_loss(stage_features)
    return _sum_terms(terms, image), terms


# ---------------------------------------------------------------------------------------------------------------------
# Perceptual loss: LPIPS's distance without its learned per-channel weights, over a pluggable feature network


def vgg16_weights_path() -> Path | None:
    """torchvision's cache path of the VGG16 ImageNet weights (<hub dir>/checkpoints/vgg16-397923af.pth), or None."""
    try:
        from torchvision.models import VGG16_Weights
    except ImportError:
        return None
    filename = Path(urlparse(VGG16_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _missing_vgg_message(path: Path | None) -> str:
    """How to provide the VGG16 weights when they are not in the local torch hub cache."""
    where = f"at {path}" if path is not None else "(torchvision is not installed)"
    return (
        f"The VGG16 perceptual network needs torchvision's VGG16 ImageNet weights {where}, and they are not there; "
        "nothing is downloaded. Copy vgg16-397923af.pth (https://download.pytorch.org/models/vgg16-397923af.pth) "
        "into <torch hub dir>/checkpoints/ (set TORCH_HOME to move the hub dir), or choose "
        "perceptual_network='clip' (frozen-CLIP features) or 'none'."
    )


def load_vgg16_features(path: Path) -> nn.Sequential:
    """Frozen torchvision `vgg16().features[:30]` (conv1_1 ... relu5_3) with the weights read from `path`."""
    from torchvision.models import vgg16

    # built on meta (no random init of the 120M-parameter classifier), then the real tensors are assigned
    with torch.device("meta"):
        features = vgg16(weights=None).features[: VGG16_LAYER_ENDS["relu5_3"]]
    state = torch_load_weights(path)  # a truncated download: an OSError naming the file
    state = {k.removeprefix("features."): v.float() for k, v in state.items() if k.startswith("features.")}
    state = {k: v for k, v in state.items() if int(k.split(".")[0]) < VGG16_LAYER_ENDS["relu5_3"]}
    try:
        features.load_state_dict(state, assign=True)
    except RuntimeError as error:
        raise RuntimeError(f"{path} does not hold torchvision VGG16 `features.*` weights: {error}") from error
    return features.requires_grad_(False).eval()


class PATVGG16Features:
    """Frozen VGG16: (B, 3, H_img, W_img) images in [0, 1] -> [relu1_2, relu2_2, relu3_3, relu4_3, relu5_3] maps.

    Not an `nn.Module`, so it stays outside the PAT model's module tree (never saved in PAT checkpoints, counted among
    PAT parameters or wiped by from_pretrained's meta-device construction); it follows the input's device. Without
    `features`, the weights are read from the local torch hub cache at the first call (a RuntimeError with
    instructions when the file is absent; nothing is downloaded), so a model whose config names VGG loads and runs
    inference on a machine without them.
    """

    name = "vgg16"

    def __init__(self, features: nn.Sequential | None = None):
        self.features = features

    @classmethod
    def from_torch_hub_cache(cls) -> "PATVGG16Features":
        """Load from the local torch hub cache now; RuntimeError with instructions when the file is absent."""
        path = vgg16_weights_path()
        if path is None or not path.is_file():
            raise RuntimeError(_missing_vgg_message(path))
        return cls(load_vgg16_features(path))

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.features is None:
            self.features = self.from_torch_hub_cache().features
        self.features.to(images.device)  # a no-op once it is there
        # copied without waiting for the device (new_tensor's copy would)
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).to(images.device, non_blocking=True).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype).to(images.device, non_blocking=True).view(1, 3, 1, 1)
        # LPIPS maps [-1, 1] inputs to ImageNet statistics with its ScalingLayer; from [0, 1] that is this
        hidden = (images - mean) / std
        outputs, start = [], 0
        for end in VGG16_LAYER_ENDS.values():
            hidden = self.features[start:end](hidden)
            outputs.append(hidden)
            start = end
        return outputs


class PATClipPerceptualFeatures:
    """The frozen CLIP trunk of an image model (`PATModel`) as the perceptual network: (B, 3, H_img, W_img) images in
    [0, 1] -> the (B, C_clip, h, w) maps after each trunk block, in fp32 (gradients reach the images).

    The images are CLIP-normalised, resized as the model resizes CLIP's input (`clip_input`) and enter in CLIP's dtype.
    Holds a reference to the image model, not a copy, and is not an `nn.Module` (the CLIP weights are the model's own).
    """

    name = "clip"

    def __init__(self, image_model: nn.Module):
        self.image_model = image_model

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        tower = self.image_model.clip_tower
        # copied without waiting for the device (new_tensor's copy would, at every training step)
        mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=images.dtype).to(images.device, non_blocking=True)[:, None, None]
        std = torch.tensor(OPENAI_CLIP_STD, dtype=images.dtype).to(images.device, non_blocking=True)[:, None, None]
        pixel_values = self.image_model.clip_input((images - mean) / std).to(next(tower.visual.parameters()).dtype)
        return [fmap.float() for fmap in tower.extract_features(pixel_values).maps[1:]]


class _OutsideModuleTree:
    """Holds a feature network without registering it: a VGG or the model's own CLIP must not enter the loss's (and
    so the PAT model's) parameters or state dict."""

    def __init__(self, network: Callable[[torch.Tensor], list[torch.Tensor]]):
        self.network = network

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.network(images)


def unit_feature_distance(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A pair of feature maps (B, channels, height, width) -> scalar mean over the batch and grid of the channel sum
    of |unit(a) - unit(b)|^2 (LPIPS, no lin)."""
    features = F.normalize(_fp32(features), dim=1, eps=1e-10)
    reference = F.normalize(_fp32(reference), dim=1, eps=1e-10)
    return (features - reference).square().sum(1).mean()


class PATPerceptualLoss(nn.Module):
    """LPIPS without learned weights: (B, 3, H_img, W_img) images and targets in [0, 1] -> scalar sum over the F layers.

    Per layer: unit-normalise over channels, square the difference, sum over channels, average over batch and grid.
    LPIPS's learned 1x1 "lin" weights need downloaded weights; this is its uncalibrated baseline (each layer in
    [0, 4]). `feature_network`, given at construction, maps [0, 1] images to a list of F (B, channels, height,
    width) maps and does its own input normalisation; it is kept out of the module tree (`_OutsideModuleTree`).
    `name` says which network a run used.
    """

    def __init__(self, feature_network: Callable[[torch.Tensor], list[torch.Tensor]], name: str):
        super().__init__()
        self.feature_network = _OutsideModuleTree(feature_network)
        self.name = name

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the target is data: its features need no graph
            target_features = self.feature_network(targets)
        image_features = self.feature_network(images)
        distances = [unit_feature_distance(a, b) for a, b in zip(image_features, target_features, strict=True)]
        return torch.stack(distances).sum()

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def resolve_perceptual_network(kind: str) -> str:
    """`perceptual_network` as a model is built: "auto" becomes "vgg" when torchvision's VGG16 weights are in the
    local torch hub cache and "clip" otherwise; "vgg", "clip" and "none" stay. The model stores the result in its
    config (saved with it), so the loss never changes later because a file appeared in or left the cache."""
    if kind == "auto":
        path = vgg16_weights_path()
        return "vgg" if path is not None and path.is_file() else "clip"
    return kind


def perceptual_feature_network(kind: str, image_model: nn.Module | None = None):
    """The feature network of a resolved `perceptual_network` kind: `PATVGG16Features` (weights read at first use),
    `PATClipPerceptualFeatures(image_model)`, or None for "none"."""
    if kind == "vgg":
        return PATVGG16Features()
    if kind == "clip":
        if image_model is None:
            raise ValueError("perceptual_network='clip' needs the image model whose frozen CLIP gives the features.")
        return PATClipPerceptualFeatures(image_model)
    if kind == "none":
        return None
    raise ValueError(f"perceptual_network {kind!r} is not resolved; expected 'vgg', 'clip' or 'none' "
                     "(`resolve_perceptual_network` turns 'auto' into one of them).")


# ---------------------------------------------------------------------------------------------------------------------
# Reconstruction (RL1) and VQ


def denormalize(images: torch.Tensor, image_mean, image_std) -> torch.Tensor:
    """(B, 3, H_img, W_img) model-normalised -> the same in [0, 1] space (not clamped: that would stop gradients)."""
    # copied without waiting (a blocking host-to-device copy would wait for the device at every step)
    mean = torch.as_tensor(image_mean, dtype=torch.float32).to(images.device, non_blocking=True).view(1, -1, 1, 1)
    std = torch.as_tensor(image_std, dtype=torch.float32).to(images.device, non_blocking=True).view(1, -1, 1, 1)
    return _fp32(images) * std + mean


def reconstruction_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    image_mean,
    image_std,
    mse_weight: float = 1.0,
    l1_weight: float = 0.1,
    perceptual_weight: float = 0.1,
    perceptual: PATPerceptualLoss | None = None,
    valid_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, 3, H_img, W_img) pair, model-normalised -> (total, {"loss_rec_mse", "loss_rec_l1", "loss_rec_perceptual"}).

    The dict values carry their inner weights and sum to the total. Every term is computed on the de-normalised
    [0, 1] images, the scale the RL1 weights were chosen for (VQGAN-style losses on [0, 1] pixels), not on the ~4x
    wider normalised values. `valid_mask` (B, 1, H_img, W_img) or (B, H_img, W_img), 1 on
    real pixels: MSE and L1 average over valid pixels only; for the perceptual term the padded pixels of the
    reconstruction are replaced by the target's, so only real pixels create a feature difference.
    """
    prediction = denormalize(reconstruction, image_mean, image_std)
    reference = denormalize(target.detach(), image_mean, image_std)
    mask = torch.ones_like(prediction[:, :1]) if valid_mask is None else _as_mask(valid_mask, prediction)
    difference = prediction - reference
    count = (mask.sum() * prediction.shape[1]).clamp_min(1)
    terms = {
        "loss_rec_mse": mse_weight * (difference.square() * mask).sum() / count,
        "loss_rec_l1": l1_weight * (difference.abs() * mask).sum() / count,
        "loss_rec_perceptual": prediction.new_zeros(()),
    }
    if perceptual is not None and perceptual_weight != 0:
        masked_prediction = torch.where(mask > 0, prediction, reference)
        terms["loss_rec_perceptual"] = perceptual_weight * perceptual(masked_prediction, reference)
    return _sum_terms(terms, prediction), terms


def vq_loss(vq_losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """{stage: scalar quantizer loss} -> (unweighted sum over the codebooks, {"loss_vq_<stage>"})."""
    terms = {f"loss_vq_{stage}": value for stage, value in vq_losses.items()}
    return _sum_terms(terms), terms


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 -> float32 (losses sum many small terms and exp() large negative ones); float64 stays."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _as_mask(valid_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H_img, W_img) or (B, 1, H_img, W_img) 0/1 or bool -> (B, 1, H_img, W_img) float32 on `like`'s device."""
    mask = valid_mask[:, None] if valid_mask.dim() == 3 else valid_mask
    if mask.shape[0] != like.shape[0] or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"valid_mask {tuple(valid_mask.shape)} does not match images {tuple(like.shape)}.")
    return mask.to(device=like.device, dtype=torch.float32)


def _sum_terms(terms: dict[str, torch.Tensor], like: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the dict values; a float32 zero (on `like`'s device) when the dict is empty."""
    if not terms:
        return torch.zeros((), device=like.device if like is not None else None)
    return torch.stack([_fp32(value) for value in terms.values()]).sum()


# ---------------------------------------------------------------------------------------------------------------------
# The combined tokenization loss


class PATTokenizationLoss(nn.Module):
    """PAT's tokenization losses with the config's weights -> (total, dict of weighted terms).

    Every dict entry is weighted: group weight x inner weight x raw term. Two kinds of entries:
    * group totals, `GROUP_KEYS` = loss_vq, loss_spatial_alignment, loss_reconstruction: these, and only these,
      sum to the returned total;
    * per-stage / per-term entries for logging, each already weighted, summing to their group:
      loss_vq_<stage> (vq_loss_weight x L_vq,s), loss_sa_crf_<stage> and loss_sa_tv_<stage>
      (spatial_alignment_weight x term), loss_rec_mse / _l1 / _perceptual
      (reconstruction_weight x inner weight x term).
    Do not sum the whole dict: that would count every group twice.

    With `use_spatial_alignment=False` no loss_spatial_alignment / loss_sa_* entries exist. The perceptual term's
    feature network is given at construction (`perceptual_feature_network`) and used only when its weight is
    non-zero; `perceptual_network_name` says which one ("vgg16", "clip", "none").
    """

    GROUP_KEYS = ("loss_vq", "loss_spatial_alignment", "loss_reconstruction")

    def __init__(
        self,
        config: PATConfig,
        perceptual_network: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
    ):
        super().__init__()
        self.vq_weight = config.vq_loss_weight
        self.use_spatial_alignment = config.use_spatial_alignment
        self.spatial_alignment_weight = config.spatial_alignment_weight
        self.crf_num_samples = config.crf_num_samples
        self.reconstruction_weight = config.reconstruction_weight
        self.inner_reconstruction_weights = {
            "mse_weight": config.reconstruction_mse_weight,
            "l1_weight": config.reconstruction_l1_weight,
            "perceptual_weight": config.reconstruction_perceptual_weight,
        }
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.perceptual = self._perceptual_loss(config, perceptual_network)
        self.perceptual_network_name = self.perceptual.name if self.perceptual is not None else "none"

    @staticmethod
    def _perceptual_loss(config: PATConfig, network) -> PATPerceptualLoss | None:
        """The perceptual term over `network`; None when its weight is zero or the config chooses "none"."""
        if config.reconstruction_weight == 0 or config.reconstruction_perceptual_weight == 0:
            return None
        if config.perceptual_network == "none":
            return None
        if network is None:
            raise ValueError(
                f"perceptual_network={config.perceptual_network!r} with reconstruction_perceptual_weight="
                f"{config.reconstruction_perceptual_weight} needs its feature network: pass `perceptual_network` "
                "(e.g. `perceptual_feature_network(kind, image_model)`), or set perceptual_network='none'."
            )
        return PATPerceptualLoss(network, getattr(network, "name", type(network).__name__))

    def forward(
        self,
        image: torch.Tensor,
        quantized: dict[str, torch.Tensor],
        vq_losses: dict[str, torch.Tensor],
        reconstruction: torch.Tensor | None,
        valid_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        crf_sample_indices: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised, padded input (B, 3, H_img, W_img); z_q {stage: (B, C_code, H_s, W_s)}; {stage: scalar};
        the reconstruction (B, 3, H_img, W_img) or None.

        Spatial alignment covers the early/mid/late stages present in `quantized` (not the latent codebook);
        `reconstruction=None` (head skipped) leaves out the reconstruction group. `valid_mask` (B, 1, H_img, W_img)
        marks real pixels for the reconstruction terms; `crf_sample_indices` {stage: (P,)} fixes the CRF samples.
        """
        terms: dict[str, torch.Tensor] = {}
        if vq_losses:
            self._add_group(terms, "loss_vq", self.vq_weight, *vq_loss(vq_losses), prefix="loss_vq")
        if self.use_spatial_alignment:
            stages = {s: quantized[s] for s in PYRAMID_STAGES if s in quantized}  # not the latent codebook
            group = spatial_alignment_loss(image, stages, self.crf_num_samples, generator, crf_sample_indices)
            self._add_group(terms, "loss_spatial_alignment", self.spatial_alignment_weight, *group, prefix="loss_sa")
        if reconstruction is not None:
            group = reconstruction_loss(
                reconstruction,
                image,
                self.image_mean,
                self.image_std,
                perceptual=self.perceptual,
                valid_mask=valid_mask,
                **self.inner_reconstruction_weights,
            )
            self._add_group(terms, "loss_reconstruction", self.reconstruction_weight, *group, prefix="loss_rec")
        total = _sum_terms({k: terms[k] for k in self.GROUP_KEYS if k in terms}, image)
        return total, terms

    @staticmethod
    def _add_group(terms: dict, group_key: str, weight: float, group_total, group_terms: dict, prefix: str) -> None:
        """Write the weighted group total and its weighted per-term entries (renamed under `prefix`) into `terms`."""
        terms[group_key] = weight * group_total
        for name, value in group_terms.items():
            # loss_crf_early -> loss_sa_crf_early; loss_vq_* and loss_rec_* already carry their prefix
            renamed = name if name.startswith(prefix) else prefix + name.removeprefix("loss")
            terms[renamed] = weight * value

    def extra_repr(self) -> str:
        return (
            f"vq_weight={self.vq_weight}, spatial_alignment={self.use_spatial_alignment} "
            f"(weight {self.spatial_alignment_weight}, n={self.crf_num_samples}), "
            f"reconstruction_weight={self.reconstruction_weight}, {self.inner_reconstruction_weights}, "
            f"perceptual={self.perceptual_network_name!r}"
        )


__all__ = [
    "PATClipPerceptualFeatures",
    "PATPerceptualLoss",
    "PATTokenizationLoss",
    "PATVGG16Features",
    "area_resize",
    "crf_kernel",
    "crf_loss",
    "denormalize",
    "load_vgg16_features",
    "pairwise_squared_distances",
    "perceptual_feature_network",
    "reconstruction_loss",
    "resolve_perceptual_network",
    "sample_pixel_indices",
    "spatial_alignment_loss",
    "tv_loss",
    "unit_feature_distance",
    "vgg16_weights_path",
    "vq_loss",
]
