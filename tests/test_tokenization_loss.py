"""PAT tokenization losses: CRF and TV by hand and by brute force, reconstruction in [0, 1], perceptual, weighting."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_pat.tokenization_loss import (
    PATPerceptualLoss,
    PATTokenizationLoss,
    PATVGG16Features,
    crf_loss,
    load_vgg16_features,
    perceptual_feature_network,
    reconstruction_loss,
    resolve_perceptual_network,
    spatial_alignment_loss,
    tv_loss,
    vgg16_weights_path,
    vq_loss,
)

from conftest import tiny_config


MEAN, STD = (0.4, 0.5, 0.6), (0.1, 0.2, 0.3)


def toy_features(images: torch.Tensor) -> list[torch.Tensor]:
    """A parameter-free stand-in for a feature network: the image and its 2x average pool."""
    return [images, F.avg_pool2d(images, 2)]


def brute_force_crf(image, features, indices, alpha=0.1, beta=0.15, gamma=0.005, w1=10.0, w2=3.0, shift=0.0):
    """The architecture.md formula, one pair at a time."""
    height, width = features.shape[-2:]
    total, count = 0.0, 0
    for b in range(features.shape[0]):
        for i in indices.tolist():
            for j in indices.tolist():
                pi = torch.tensor([i // width / height, i % width / width])
                pj = torch.tensor([j // width / height, j % width / width])
                position = (pi - pj).square().sum()
                colour = (image[b].flatten(1)[:, i] - image[b].flatten(1)[:, j]).square().sum()
                kernel = w1 * torch.exp(-position / (2 * alpha) - colour / (2 * beta))
                kernel = kernel + w2 * torch.exp(-position / (2 * gamma)) - shift
                total += kernel * (features[b].flatten(1)[:, i] - features[b].flatten(1)[:, j]).square().sum()
                count += 1
    return total / count


# ---------------------------------------------------------------------------------------------------------------------
# CRF and TV


def test_crf_is_zero_for_constant_features():
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        image = torch.randn(2, 3, 8, 8, generator=generator)
        features = torch.ones(2, 5, 8, 8) * 10 * torch.randn(1, 5, 1, 1, generator=generator)
        assert crf_loss(image, features, num_samples=40, generator=generator).abs().item() < 1e-6


def test_crf_is_positive_for_varying_features():
    generator = torch.Generator().manual_seed(0)
    loss = crf_loss(torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8), num_samples=40, generator=generator)
    assert loss.item() > 0


def test_crf_matches_brute_force_loop_with_injected_indices():
    torch.manual_seed(0)
    image, features = torch.randn(2, 3, 5, 7), torch.randn(2, 4, 5, 7)
    indices = torch.tensor([0, 3, 8, 8, 17, 34, 20])  # a repeat, the first and the last pixel
    loss = crf_loss(image, features, sample_indices=indices)
    torch.testing.assert_close(loss, brute_force_crf(image, features, indices), rtol=1e-5, atol=1e-6)
    shifted = crf_loss(image, features, shift=0.5, sample_indices=indices)
    torch.testing.assert_close(shifted, brute_force_crf(image, features, indices, shift=0.5), rtol=1e-5, atol=1e-6)


def test_crf_colour_kernel_makes_feature_edges_cheaper_at_image_edges():
    features = torch.zeros(1, 2, 8, 8)
    features[:, :, :, 4:] = 1.0  # a feature step between columns 3 and 4
    edge_image = torch.full((1, 3, 8, 8), -1.5)
    edge_image[:, :, :, 4:] = 1.5  # the image has its edge in the same place
    flat_image = torch.zeros(1, 3, 8, 8)  # the same feature step inside a flat region
    every_pixel = torch.arange(64)
    at_edge = crf_loss(edge_image, features, sample_indices=every_pixel)
    in_flat = crf_loss(flat_image, features, sample_indices=every_pixel)
    assert 0 < at_edge < in_flat


def test_crf_keeps_fp32_distances_under_autocast():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 16, 16, generator=generator)
    features = F.normalize(torch.randn(2, 32, 16, 16, generator=generator), dim=1).bfloat16()
    indices = torch.randint(0, 256, (200,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = crf_loss(image, features, sample_indices=indices)
    torch.testing.assert_close(mixed, crf_loss(image, features.float(), sample_indices=indices))


def test_crf_draws_are_reproducible_with_a_generator():
    image, features = torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    first = crf_loss(image, features, num_samples=30, generator=torch.Generator().manual_seed(3))
    again = crf_loss(image, features, num_samples=30, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)


def test_tv_is_zero_for_constant_maps():
    assert tv_loss(torch.full((2, 3, 4, 5), 0.7)).item() == 0.0


def test_tv_hand_computed_2x2():
    features = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    # vertical: (4-1)^2 + (8-2)^2 = 45; horizontal: (2-1)^2 + (8-4)^2 = 17; / (1*1*2*2)
    assert tv_loss(features).item() == pytest.approx(62 / 4)


def test_spatial_alignment_area_resizes_the_image_per_stage():
    image = torch.randn(2, 3, 32, 48)
    quantized = {"early": torch.randn(2, 4, 8, 12), "mid": torch.randn(2, 4, 3, 5)}  # 4x and a non-integer ratio
    indices = {"early": torch.arange(0, 96, 7), "mid": torch.arange(15)}
    total, terms = spatial_alignment_loss(image, quantized, sample_indices=indices)
    assert list(terms) == ["loss_crf_early", "loss_tv_early", "loss_crf_mid", "loss_tv_mid"]
    torch.testing.assert_close(total, sum(terms.values()))
    early_guide = F.interpolate(image, size=(8, 12), mode="area")
    expected = crf_loss(early_guide, quantized["early"], sample_indices=indices["early"])
    torch.testing.assert_close(terms["loss_crf_early"], expected)
    torch.testing.assert_close(terms["loss_tv_mid"], tv_loss(quantized["mid"]))


# ---------------------------------------------------------------------------------------------------------------------
# Reconstruction and perceptual


def test_reconstruction_is_zero_for_identical_images():
    image = torch.randn(2, 3, 8, 8)
    perceptual = PATPerceptualLoss(toy_features, "toy")
    total, terms = reconstruction_loss(image, image.clone(), MEAN, STD, perceptual=perceptual)
    assert total.item() == pytest.approx(0.0, abs=1e-7)
    assert set(terms) == {"loss_rec_mse", "loss_rec_l1", "loss_rec_perceptual"}


def test_reconstruction_terms_are_in_unit_pixel_space():
    # normalised 0 vs 1 is a [0, 1]-space difference of std per channel
    reconstruction, target = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    total, terms = reconstruction_loss(reconstruction, target, MEAN, STD, mse_weight=1.0, l1_weight=0.5)
    assert terms["loss_rec_mse"].item() == pytest.approx((0.01 + 0.04 + 0.09) / 3)
    assert terms["loss_rec_l1"].item() == pytest.approx(0.5 * 0.2)
    assert terms["loss_rec_perceptual"].item() == 0.0
    torch.testing.assert_close(total, terms["loss_rec_mse"] + terms["loss_rec_l1"])


def test_valid_mask_excludes_padded_pixels():
    torch.manual_seed(0)
    target = torch.randn(2, 3, 8, 8)
    reconstruction = target + 0.3 * torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :6, :5] = 1  # real content top-left, padding elsewhere
    garbage = torch.where(mask.bool(), reconstruction, torch.full_like(reconstruction, 50.0))
    perceptual = PATPerceptualLoss(toy_features, "toy")
    _, masked = reconstruction_loss(garbage, target, MEAN, STD, perceptual=perceptual, valid_mask=mask)
    _, cropped = reconstruction_loss(reconstruction[..., :6, :5], target[..., :6, :5], MEAN, STD)
    torch.testing.assert_close(masked["loss_rec_mse"], cropped["loss_rec_mse"])
    torch.testing.assert_close(masked["loss_rec_l1"], cropped["loss_rec_l1"])
    _, padding_only = reconstruction_loss(
        torch.where(mask.bool(), target, garbage), target, MEAN, STD, perceptual=perceptual, valid_mask=mask[:, 0]
    )
    assert all(value.item() == pytest.approx(0.0, abs=1e-7) for value in padding_only.values())


def test_perceptual_is_lpips_distance_without_lin_weights():
    torch.manual_seed(0)
    images, targets = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    loss = PATPerceptualLoss(toy_features, "toy")(images, targets)
    expected = 0.0
    for a, b in zip(toy_features(images), toy_features(targets)):
        a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        expected += (a - b).square().sum(1).mean()
    torch.testing.assert_close(loss, expected)
    assert PATPerceptualLoss(toy_features, "toy")(images, images).item() == pytest.approx(0.0, abs=1e-6)


def test_perceptual_gradient_reaches_the_reconstruction_only():
    reconstruction = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.randn(1, 3, 8, 8, requires_grad=True)
    total, _ = reconstruction_loss(reconstruction, target, MEAN, STD, perceptual=PATPerceptualLoss(toy_features, "t"))
    total.backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0
    assert target.grad is None


def test_feature_fn_modules_stay_out_of_the_module_tree():
    network = torch.nn.Conv2d(3, 4, 1)
    loss = PATPerceptualLoss(lambda x: [network(x)], "conv")
    module_loss = PATPerceptualLoss(network, "conv-module")
    assert list(loss.parameters()) == [] and list(module_loss.parameters()) == []
    assert module_loss.state_dict() == {}


def test_vgg_without_local_weights_raises_a_clear_error_at_first_use(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    assert vgg16_weights_path() == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    network = perceptual_feature_network("vgg")  # building needs no file: inference never calls it
    with pytest.raises(RuntimeError, match=r"VGG16 ImageNet weights at .*vgg16-397923af\.pth.*nothing is downloaded"):
        network(torch.rand(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="nothing is downloaded"):
        PATVGG16Features.from_torch_hub_cache()


def test_auto_resolves_to_clip_without_vgg_weights_and_kinds_build_their_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert resolve_perceptual_network("auto") == "clip"
    assert [resolve_perceptual_network(kind) for kind in ("vgg", "clip", "none")] == ["vgg", "clip", "none"]
    image_model = torch.nn.Identity()
    assert perceptual_feature_network("clip", image_model).image_model is image_model
    assert perceptual_feature_network("none") is None
    with pytest.raises(ValueError, match="image model"):
        perceptual_feature_network("clip")
    with pytest.raises(ValueError, match="not resolved"):
        perceptual_feature_network("auto")


def test_vgg_loads_from_the_local_cache_only(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import vgg16

    with torch.device("meta"):
        shapes = {f"features.{k}": v.shape for k, v in vgg16().features.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: 0.05 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    vgg16_weights_path().parent.mkdir(parents=True)
    torch.save(state, vgg16_weights_path())
    features = load_vgg16_features(vgg16_weights_path())
    torch.testing.assert_close(features[28].weight, state["features.28.weight"])
    assert resolve_perceptual_network("auto") == "vgg"
    network = perceptual_feature_network("vgg")
    maps = network(torch.rand(1, 3, 32, 32))  # reads the file now
    torch.testing.assert_close(network.features[28].weight, state["features.28.weight"])
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    perceptual = PATPerceptualLoss(network, network.name)
    assert perceptual.name == "vgg16" and list(perceptual.parameters()) == []
    assert math.isfinite(perceptual(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).item())


def test_a_truncated_vgg_file_raises_oserror_naming_it(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.randn(64, 3, 3, 3)}, path)
    path.write_bytes(path.read_bytes()[:300])  # an interrupted download
    with pytest.raises(OSError, match="truncated") as caught:
        load_vgg16_features(path)
    assert str(path) in str(caught.value)

# ---------------------------------------------------------------------------------------------------------------------
# VQ and the combined tokenization loss


def test_vq_loss_sums_the_codebooks():
    total, terms = vq_loss({"early": torch.tensor(1.0), "latent": torch.tensor(2.5)})
    assert total.item() == 3.5 and list(terms) == ["loss_vq_early", "loss_vq_latent"]


def tokenization_inputs(seed: int = 0):
    """Image (2, 3, 32, 32), z_q at strides 2 / 4 / 8 plus the latent grid, quantizer losses, a reconstruction."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, 32, 32, generator=generator)
    quantized = {
        name: F.normalize(torch.randn(2, 4, size, size, generator=generator), dim=1)
        for name, size in (("early", 16), ("mid", 8), ("late", 4), ("latent", 4))
    }
    vq_losses = {name: torch.rand((), generator=generator) for name in quantized}
    reconstruction = image + 0.5 * torch.randn(2, 3, 32, 32, generator=generator)
    indices = {name: torch.randint(0, 16, (12,), generator=generator) for name in ("early", "mid", "late")}
    return image, quantized, vq_losses, reconstruction, indices


def run_tokenization_loss(**overrides):
    config = tiny_config(perceptual_network="clip", **overrides)
    loss_fn = PATTokenizationLoss(config, perceptual_network=toy_features)
    image, quantized, vq_losses, reconstruction, indices = tokenization_inputs()
    return loss_fn(image, quantized, vq_losses, reconstruction, crf_sample_indices=indices)


def test_group_totals_sum_to_the_total_and_terms_to_their_group():
    total, terms = run_tokenization_loss()
    torch.testing.assert_close(total, sum(terms[k] for k in PATTokenizationLoss.GROUP_KEYS))
    groups = {"loss_vq": "loss_vq_", "loss_spatial_alignment": "loss_sa_", "loss_reconstruction": "loss_rec_"}
    for group, prefix in groups.items():
        parts = [value for name, value in terms.items() if name.startswith(prefix)]
        torch.testing.assert_close(terms[group], sum(parts))
    assert {"loss_vq_latent", "loss_sa_crf_early", "loss_sa_tv_late", "loss_rec_perceptual"} <= set(terms)
    assert "loss_sa_crf_latent" not in terms  # spatial alignment covers early / mid / late only


def test_doubling_each_weight_doubles_its_weighted_entries():
    _, base = run_tokenization_loss()
    cases = {  # field -> (entries that double, entries that change by less: their group total)
        "vq_loss_weight": ([n for n in base if n.startswith("loss_vq")], []),
        "spatial_alignment_weight": ([n for n in base if n.startswith(("loss_sa", "loss_spatial"))], []),
        "reconstruction_weight": ([n for n in base if n.startswith(("loss_rec", "loss_reconstruction"))], []),
        "reconstruction_mse_weight": (["loss_rec_mse"], ["loss_reconstruction"]),
        "reconstruction_l1_weight": (["loss_rec_l1"], ["loss_reconstruction"]),
        "reconstruction_perceptual_weight": (["loss_rec_perceptual"], ["loss_reconstruction"]),
    }
    config = tiny_config()
    for field, (doubled, regrouped) in cases.items():
        total, terms = run_tokenization_loss(**{field: 2 * getattr(config, field)})
        assert set(terms) == set(base)
        for name in set(terms) - set(regrouped):
            factor = 2.0 if name in doubled else 1.0
            torch.testing.assert_close(terms[name], factor * base[name], msg=f"{field}: {name}")
        torch.testing.assert_close(total, sum(terms[k] for k in PATTokenizationLoss.GROUP_KEYS))
    assert len(cases["vq_loss_weight"][0]) == 5 and len(cases["spatial_alignment_weight"][0]) == 7


def test_gradients_reach_every_quantized_stage_and_the_reconstruction():
    config = tiny_config(perceptual_network="clip")
    image, quantized, vq_losses, reconstruction, indices = tokenization_inputs()
    quantized = {name: value.requires_grad_(True) for name, value in quantized.items()}
    reconstruction.requires_grad_(True)
    total, _ = PATTokenizationLoss(config, toy_features)(image, quantized, vq_losses, reconstruction)
    total.backward()
    for name in ("early", "mid", "late"):
        assert quantized[name].grad.abs().sum() > 0, name
    assert quantized["latent"].grad is None  # spatial alignment leaves the latent codebook alone
    assert reconstruction.grad.abs().sum() > 0


def test_spatial_alignment_off_removes_its_terms():
    total, terms = run_tokenization_loss(use_spatial_alignment=False)
    assert not any(name.startswith(("loss_sa", "loss_spatial")) for name in terms)
    torch.testing.assert_close(total, terms["loss_vq"] + terms["loss_reconstruction"])


def test_perceptual_network_name_is_reported():
    assert PATTokenizationLoss(tiny_config(perceptual_network="clip"), toy_features).perceptual_network_name == (
        "function"  # a plain callable is named by its type; the package's networks carry a `name`
    )
    network = perceptual_feature_network("clip", torch.nn.Identity())
    assert PATTokenizationLoss(tiny_config(perceptual_network="clip"), network).perceptual_network_name == "clip"
    assert PATTokenizationLoss(tiny_config(perceptual_network="none")).perceptual_network_name == "none"
    # a zero perceptual weight builds no network, so no CLIP function (or VGG file) is needed
    assert PATTokenizationLoss(tiny_config(reconstruction_perceptual_weight=0.0)).perceptual is None


def test_a_perceptual_term_without_its_network_is_refused():
    with pytest.raises(ValueError, match=r"perceptual_network='clip' .* needs its feature network"):
        PATTokenizationLoss(tiny_config(perceptual_network="clip"))
