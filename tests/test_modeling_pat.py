"""PATModel / PATForOpenVocabSegmentation on the tiny config: shapes, loss and gradients, save/load, init."""

import pytest
import torch

from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATModel
from modeling_pat.model_outputs import PATDecodedLevel

from conftest import tiny_config, tiny_model


def random_labels(pixel_values, num_classes=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    b, _, h, w = pixel_values.shape
    coarse = torch.randint(0, num_classes, (b, 1, h // 16, w // 16), generator=generator).float()
    labels = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    labels[:, :8] = 255
    return labels


def test_output_shapes_follow_the_config(model, pixel_values):
    config = model.config
    with torch.no_grad():
        out = model(pixel_values)
    grid = (pixel_values.shape[2] // config.side_patch_size, pixel_values.shape[3] // config.side_patch_size)
    assert out.class_queries_logits.shape == (2, config.num_queries, len(config.id2label) + 1)
    assert out.masks_queries_logits.shape == (2, config.num_queries, *grid)
    assert out.mask_embeddings.shape == (2, config.num_queries, config.clip_config["embed_dim"])
    assert out.text_embeddings.shape == (len(config.id2label) + 1, config.clip_config["embed_dim"])
    assert out.padded_sizes.tolist() == [[128, 160]] * 2
    assert out.auxiliary_logits is None and out.loss is None  # eval mode decodes the final level only


def test_image_side_model_outputs(pixel_values):
    torch.manual_seed(0)
    config = tiny_config()
    model = PATModel(config).eval()
    with torch.no_grad():
        out = model(pixel_values, output_auxiliary_logits=True, output_hidden_states=True)
    assert out.attention_bias.shape == (2, config.attn_bias_num_heads, config.num_queries, 8, 10)
    assert out.query_embeddings.shape == (2, config.num_queries, config.side_hidden_size)
    assert out.side_tokens.shape == (2, config.side_hidden_size, 8, 10)
    with pytest.warns(FutureWarning, match="use `side_tokens`"):
        assert out.pixel_embeddings is out.side_tokens  # the earlier name still reads, deprecated
    assert len(out.auxiliary_outputs) == len(config.deep_supervision_layers) - 1
    assert all(isinstance(level, PATDecodedLevel) for level in out.auxiliary_outputs)
    assert out.auxiliary_outputs[0]["masks_queries_logits"].shape == (2, config.num_queries, 8, 10)  # still a dict
    assert len(out.clip_hidden_states) == config.clip_feature_layers + 1
    assert out.clip_hidden_states[0].shape == (2, 1 + 4 * 5, 64)
    assert len(out.side_hidden_states) == config.side_num_hidden_layers + 1
    assert out.decoder_hidden_states is None  # SAN mode has no PAT decoder


def test_pat_hidden_states_cover_the_side_vit_and_the_decoder(pixel_values):
    torch.manual_seed(0)
    config = tiny_config("pat-tiny")
    model = PATModel(config).eval()
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        plain = model(pixel_values)
    assert plain.side_hidden_states is None and plain.decoder_hidden_states is None
    assert len(out.side_hidden_states) == config.side_num_hidden_layers + 1
    stages = [s for s in ("late", "mid", "early") if s in config.decoder_stages]
    assert len(out.decoder_hidden_states) == len(stages) + config.decoder_num_extra_layers
    assert out.decoder_hidden_states[-1].shape == (2, config.decoder_hidden_size, 32, 40)

    # the segmentation model hands them on
    full = tiny_model(preset="pat-tiny")
    with torch.no_grad():
        top = full(pixel_values, output_hidden_states=True)
        inner = full.model(pixel_values, output_hidden_states=True)
    for name in ("clip_hidden_states", "side_hidden_states", "decoder_hidden_states"):
        assert len(getattr(top, name)) == len(getattr(inner, name))
        torch.testing.assert_close(getattr(top, name)[-1], getattr(inner, name)[-1], rtol=0, atol=0)
    assert full(pixel_values).side_hidden_states is None


def test_the_semantic_branch_runs_between_the_side_blocks_of_the_pyramid_stages(pixel_values, monkeypatch):
    """`run_side_adapter` stops the side ViT after each pyramid block, hands the semantic branch the block's side
    tokens before fusion and its queries, and continues with the global tokens it returns."""
    torch.manual_seed(0)
    config = tiny_config("pat-tiny")
    model = PATModel(config).eval()
    calls = []

    def recorder(stage, side_tokens, global_tokens, previous_local):
        previous = None if previous_local is None else int(previous_local.item())
        calls.append((stage, tuple(side_tokens.shape), tuple(global_tokens.shape), previous))
        return torch.full((1,), float(len(calls))), torch.full_like(global_tokens, float(len(calls)))

    monkeypatch.setattr(model.tokenization, "semantic_stage", recorder)
    with torch.no_grad():
        features = model.clip_tower.extract_features(model.clip_input(pixel_values))
        side, local_tokens = model.run_side_adapter(pixel_values, features, model.side_adapter.output_layers[-1:])
    q, tokens = config.num_queries, (2, 8 * 10, config.side_hidden_size)
    assert calls == [
        ("early", tokens, (2, q, config.side_hidden_size), None),
        ("mid", tokens, (2, q, config.side_hidden_size), 1),  # each stage gets the previous one's local tokens
        ("late", tokens, (2, q, config.side_hidden_size), 2),
    ]
    assert sorted(local_tokens) == ["early", "late", "mid"]
    for i, position in enumerate(config.pyramid_side_layers, start=1):
        assert torch.all(side.hidden_states[position][:, :q] == i)  # the returned global tokens went on


def test_return_dict_false_gives_the_same_values_as_a_tuple(model, pixel_values):
    with torch.no_grad():
        out = model(pixel_values)
        tup = model(pixel_values, return_dict=False)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], out.class_queries_logits)
    torch.testing.assert_close(tup[1], out.masks_queries_logits)


def test_batch_equals_single_images(model, pixel_values):
    with torch.no_grad():
        batch = model(pixel_values)
        singles = [model(pixel_values[i : i + 1]) for i in range(2)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batch.class_queries_logits[i], single.class_queries_logits[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.masks_queries_logits[i], single.masks_queries_logits[0], atol=1e-5, rtol=1e-4)


def test_loss_backward_reaches_exactly_the_trainable_parameters(pixel_values):
    model = tiny_model().train()
    out = model(pixel_values, labels=random_labels(pixel_values), loss_generator=torch.Generator().manual_seed(0))
    assert set(out.loss_dict) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    torch.testing.assert_close(out.loss, sum(out.loss_dict.values()))
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.clip_tower.clip.visual.positional_embedding" in trainable
    assert "classifier.void_embedding" in trainable
    assert all(n.startswith("model.side_adapter.") for n in trainable - {
        "model.clip_tower.clip.visual.positional_embedding", "classifier.void_embedding"})
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_gradients_have_their_parameters_strides(preset, batch_size, pixel_values):
    """DDP's buckets compare a gradient's strides with its parameter's, size-1 dimensions included (otherwise it
    warns and copies): no gradient may come back as a slice of a wider tensor or in channels-last layout."""
    model = tiny_model(preset=preset).train()
    pixel_values = pixel_values[:batch_size]
    out = model(pixel_values, labels=random_labels(pixel_values), loss_generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    mismatched = {name: (param.grad.stride(), param.stride()) for name, param in model.named_parameters()
                  if param.grad is not None and param.grad.stride() != param.stride()}
    assert mismatched == {}
    assert model.model.side_adapter.query_embed.grad is not None  # the parameters the fix is about are covered


def test_labels_must_match_the_padded_input(model, pixel_values):
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values, labels=torch.zeros(2, 64, 64, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        model(pixel_values, labels=torch.zeros(2, 128, 160))


def test_label_dtype_and_size_tensors_are_checked_naming_expected_and_actual(model, pixel_values):
    with pytest.raises(TypeError, match=r"`labels` must hold integer class ids \(torch.long\), got torch.float32"):
        model(pixel_values, labels=torch.zeros(2, 128, 160))
    sizes = torch.tensor([[128, 160], [100, 150]])
    with pytest.raises(ValueError, match=r"`image_sizes` must be an integer tensor of shape \(batch_size, 2\) = "
                                         r"\(2, 2\), got torch.int64 \(1, 2\)"):
        model(pixel_values, image_sizes=sizes[:1])
    with pytest.raises(ValueError, match=r"`original_sizes` .* got torch.float32 \(2, 2\)"):
        model(pixel_values, original_sizes=sizes.float())
    with torch.no_grad():
        assert model(pixel_values, image_sizes=sizes, original_sizes=sizes).image_sizes.tolist() == sizes.tolist()


def test_pixel_values_are_checked(model):
    with pytest.raises(ValueError, match="size_divisibility"):
        model(torch.randn(1, 3, 100, 128))
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(1, 4, 128, 128))


def test_pixel_values_of_another_float_dtype_are_cast_to_the_model_dtype(model, pixel_values):
    """Decision: float images of another dtype (fp64 from numpy, fp32 into a bf16 model) are cast, not refused."""
    with torch.no_grad():
        expected = model(pixel_values).class_queries_logits
        from_double = model(pixel_values.double()).class_queries_logits
    torch.testing.assert_close(from_double, expected)
    half = tiny_model().to(torch.bfloat16)
    with torch.no_grad():
        out = half(pixel_values)  # fp32 images into a bf16 model
    assert out.masks_queries_logits.dtype == torch.bfloat16 and torch.isfinite(out.class_queries_logits).all()


def test_integer_pixel_values_are_refused_naming_both_dtypes(model):
    with pytest.raises(TypeError, match=r"must be a float tensor .* runs in torch.float32\), got torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_class_embeddings_get_the_finiteness_check_of_pixel_values(model, bad):
    embeddings = model.get_class_embeddings(class_names=["cat", "sky", "grass"]).clone()
    embeddings[1, 0] = bad
    with pytest.raises(ValueError, match=r"`class_embeddings` contains NaN or infinite values \(rows \[1\]\)"):
        model(torch.zeros(1, 3, 64, 64), class_embeddings=embeddings)


def test_class_embeddings_of_any_float_dtype_give_the_same_logits(model, pixel_values):
    embeddings = model.get_class_embeddings(class_names=["cat", "sky"])
    with torch.no_grad():
        expected = model(pixel_values, class_embeddings=embeddings).class_queries_logits
        from_double = model(pixel_values, class_embeddings=embeddings.double()).class_queries_logits
    torch.testing.assert_close(from_double, expected)
    with pytest.raises(TypeError, match=r"runs in torch.float32\), got torch.int64"):
        model(pixel_values, class_embeddings=embeddings.long())
    with pytest.raises(ValueError, match=r"`class_embeddings` must have shape \(num_classes >= 1, 8\), got \(2, 4\)"):
        model(pixel_values, class_embeddings=embeddings[:, :4])


def test_input_ids_are_checked_before_the_text_tower(model, pixel_values):
    ids = model.prompt_input_ids(["cat", "sky"])
    vocab_size = model.model.clip_tower.text_tower.token_embedding.num_embeddings
    for bad, found in ((vocab_size, vocab_size), (-1, -1)):
        wrong = ids.clone()
        wrong[1, 0, 3] = bad
        with pytest.raises(ValueError, match=rf"must lie in \[0, {vocab_size - 1}\] .* got values in .*{found}"):
            model(pixel_values, input_ids=wrong)
    with pytest.raises(ValueError, match="`input_ids` are 78 tokens long; CLIP's text context holds 77"):
        model.get_class_embeddings(input_ids=torch.cat([ids, ids[..., :1]], dim=-1))
    with pytest.raises(ValueError, match="`input_ids` must be integer token ids"):
        model.get_class_embeddings(input_ids=ids.float())


def test_text_inputs_embeddings_and_default_vocabulary_agree(model, pixel_values):
    names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    ids = model.prompt_input_ids(names)
    assert ids.shape == (len(names), len(model.config.prompt_templates), 77)
    with torch.no_grad():
        by_default = model(pixel_values).class_queries_logits
        by_ids = model(pixel_values, input_ids=ids).class_queries_logits
        by_embeddings = model(pixel_values, class_embeddings=model.get_class_embeddings(ids)).class_queries_logits
        subset = model(pixel_values, input_ids=ids[:2]).class_queries_logits
    torch.testing.assert_close(by_ids, by_default)
    torch.testing.assert_close(by_embeddings, by_default)
    assert subset.shape[-1] == 3


def test_classification_is_fp32_under_autocast(model, pixel_values):
    with torch.no_grad():
        plain = model(pixel_values).class_queries_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(pixel_values).class_queries_logits
    assert autocast.dtype == torch.float32
    # the mask embeddings themselves come from bf16 layers: close to fp32, not equal
    torch.testing.assert_close(autocast, plain, atol=0.5, rtol=0.05)


@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
def test_pure_bfloat16_training_step(preset, pixel_values):
    """A model cast to bf16 (no autocast) trains: every loss term (PAT's CLIP perceptual fallback included) runs."""
    model = tiny_model(preset=preset).train().to(torch.bfloat16)
    pixel_values = pixel_values.to(torch.bfloat16)
    out = model(pixel_values, labels=random_labels(pixel_values), loss_generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("preset", ["san-tiny", "pat-tiny"])
def test_a_model_built_under_inference_mode_runs(preset, pixel_values):
    # inference-tensor weights have no version counter: the weight-keyed caches must not need one
    reference = PATForOpenVocabSegmentation(tiny_config(preset)).eval()
    with torch.inference_mode():
        model = PATForOpenVocabSegmentation(reference.config).eval()
        model.load_state_dict(reference.state_dict())
        outputs = [model(pixel_values) for _ in range(2)]  # the second call hits the caches
        expected = reference(pixel_values)
    for output in outputs:
        torch.testing.assert_close(output.class_queries_logits, expected.class_queries_logits)
        torch.testing.assert_close(output.masks_queries_logits, expected.masks_queries_logits)


def test_save_and_reload_gives_identical_outputs(tmp_path, model, pixel_values):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path).eval()
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values).class_queries_logits, model(pixel_values).class_queries_logits)
    assert reloaded.config.to_dict()["fusion_clip_layers"] == list(model.config.fusion_clip_layers)


def test_from_pretrained_in_bfloat16(tmp_path, model, pixel_values):
    model.save_pretrained(tmp_path)
    half = PATForOpenVocabSegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert half.model.side_adapter.pos_embed.dtype == torch.bfloat16
    assert half.model.clip_tower.logit_scale.dtype == torch.float32  # exp(ln 100) stays 100, not 98.9
    with torch.no_grad():
        out = half(pixel_values.bfloat16())
    assert out.masks_queries_logits.dtype == torch.bfloat16
    assert out.class_queries_logits.dtype == torch.float32  # the small classification product runs in fp32
    assert torch.isfinite(out.class_queries_logits).all()


@pytest.mark.parametrize(
    ("preset", "expected"), [("san-clip-vit-b16", 8_370_866), ("san-clip-vit-l14-336", 9_321_650)]
)
def test_trainable_parameter_counts_match_the_official_logs(preset, expected):
    with torch.device("meta"):
        model = PATForOpenVocabSegmentation(PATConfig.from_preset(preset))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


@pytest.mark.parametrize(("overrides", "expected"), [({}, 17_337_025), ({"shared_decoder": False}, 23_192_705)])
def test_pat_trainable_parameter_counts_are_the_documented_ones(overrides, expected):
    """README, register of choices "N1": SAN's 8,370,866 plus PAT's additions; 23M only with separate decoders."""
    config = PATConfig.from_preset("pat-clip-vit-b16")
    for key, value in overrides.items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = PATForOpenVocabSegmentation(config)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    assert sum(n for name, n in trainable.items() if not name.startswith("model.tokenization.")) == 8_370_866


def test_mixed_size_real_photos_end_to_end():
    from PIL import Image

    from modeling_pat import PATProcessor

    from conftest import FIXTURES

    model = tiny_model()
    processor = PATProcessor.from_config(model.config, size={"shortest_edge": 128, "longest_edge": 512})
    paths = [FIXTURES / "data/images/ade150_ADE_val_00000003.jpg", FIXTURES / "samples/coffee.png"]
    images = [Image.open(p).convert("RGB") for p in paths]
    inputs = processor(images=images, text=["wall", "sky", "cup"], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (128, 192)  # both padded to one multiple-of-32 size
    with torch.no_grad():
        outputs = model(**inputs)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=inputs["original_sizes"].tolist())
    assert [tuple(m.shape) for m in maps] == [(img.height, img.width) for img in images]
    assert all(int(m.max()) < 3 for m in maps)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: b"", "0 bytes"),
        (lambda data: data + b"!", "corrupt"),
    ],
)
def test_a_damaged_weights_file_is_named_by_from_pretrained(tmp_path, model, damage, reason):
    from transformers import AutoModel

    import modeling_pat  # noqa: F401  (registers the Auto classes)

    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    for loader in (PATForOpenVocabSegmentation, AutoModel):
        with pytest.raises(OSError, match=reason) as caught:
            loader.from_pretrained(tmp_path)
        assert str(weights) in str(caught.value)


def test_auto_perceptual_network_is_resolved_once_and_saved(monkeypatch, tmp_path):
    from modeling_pat.tokenization_loss import PATClipPerceptualFeatures, vgg16_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGG weights: "auto" means CLIP
    model = tiny_model(preset="pat-tiny")
    assert model.config.perceptual_network == "clip"
    network = model.tokenization_loss.perceptual.feature_network.network
    assert isinstance(network, PATClipPerceptualFeatures) and network.image_model is model.model
    assert not any("tokenization_loss" in name for name in model.state_dict())  # CLIP is not saved twice
    model.save_pretrained(tmp_path / "saved")
    assert PATConfig.from_pretrained(tmp_path / "saved").perceptual_network == "clip"
    vgg16_weights_path().parent.mkdir(parents=True)
    vgg16_weights_path().write_bytes(b"")  # VGG weights appear in the cache afterwards
    reloaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path / "saved")
    assert reloaded.tokenization_loss.perceptual_network_name == "clip"  # the saved choice, not the cache's
    assert PATForOpenVocabSegmentation(tiny_config("pat-tiny")).config.perceptual_network == "vgg"  # a new build


def test_clip_perceptual_features_are_the_trunk_maps_of_the_resized_image(pixel_values):
    model = tiny_model(preset="pat-tiny")
    images = torch.rand(1, 3, 64, 96)
    maps = model.tokenization_loss.perceptual.feature_network(images)
    assert len(maps) == model.config.clip_feature_layers
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    with torch.no_grad():
        expected = model.model.clip_tower.extract_features(model.model.clip_input((images - mean) / std)).maps[1:]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want.float())


def _close_std(tensor: torch.Tensor, expected: float, tolerance: float = 0.15) -> bool:
    return abs(tensor.float().std().item() - expected) <= tolerance * expected


def test_a_fresh_model_keeps_open_clips_init_of_clip():
    import open_clip

    config = tiny_config()
    torch.manual_seed(0)
    model = PATForOpenVocabSegmentation(config)
    clip_config = config.clip_config
    torch.manual_seed(1)
    reference = open_clip.model.CLIP(
        embed_dim=clip_config["embed_dim"], vision_cfg=clip_config["vision_cfg"], text_cfg=clip_config["text_cfg"],
        quick_gelu=config.clip_quick_gelu,
    ).state_dict()
    ours = {k.removeprefix("model.clip_tower.clip."): v for k, v in model.state_dict().items()
            if k.startswith("model.clip_tower.clip.")}
    assert ours.keys() == reference.keys()
    for name, expected in reference.items():
        got = ours[name]
        if expected.numel() == 1 or expected.float().std() == 0:  # constants: norms, zero biases, logit_scale
            assert torch.equal(got, expected), name
        elif expected.numel() >= 256:  # the same distribution, other draws (smaller tensors: too noisy to compare)
            assert _close_std(got, expected.float().std().item(), 0.2), name
            assert not torch.equal(got, expected), name


def test_each_pat_module_gets_its_documented_init():
    from modeling_pat.modeling_pat import PATFusionProjection, PATOffsetConv2d, PATVectorQuantizer  # as it sees them

    model = tiny_model(preset="pat-tiny")
    std = model.config.initializer_range
    clip = set(model.model.clip_tower.clip.modules())
    for name, module in model.named_modules():
        if module in clip:
            continue
        if isinstance(module, PATFusionProjection):  # Caffe2 Xavier fill: U(-sqrt(3 / fan_in), sqrt(3 / fan_in))
            bound = (3 / module.weight[0].numel()) ** 0.5
            assert module.weight.abs().max() <= bound and _close_std(module.weight, bound / 3**0.5), name
        elif isinstance(module, PATOffsetConv2d):
            assert _close_std(module.weight, 0.001), name
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            assert module.weight.numel() < 1024 or _close_std(module.weight, std), name  # small ones: too noisy
        elif isinstance(module, torch.nn.LayerNorm) or type(module).__name__ == "PATChannelLayerNorm":
            assert module.weight is None or torch.equal(module.weight, torch.ones_like(module.weight)), name
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.LayerNorm)):
            assert module.bias is None or not module.bias.any(), name
    codebooks = torch.cat([m.codebook.flatten() for m in model.modules() if isinstance(m, PATVectorQuantizer)])
    assert _close_std(codebooks, 1.0)  # choice V2: N(0, 1)
    side = model.model.side_adapter
    assert _close_std(side.pos_embed, std) and _close_std(side.query_embed, std, 0.3)

# -- transformers conventions: attention implementation, outputs, keyword arguments ------------------------------------


def test_attention_implementation_is_sdpa_and_nothing_else(tmp_path):
    model = tiny_model()
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    loaded = PATForOpenVocabSegmentation.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert loaded.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match='attn_implementation="eager" is not supported'):
        PATForOpenVocabSegmentation.from_pretrained(tmp_path, attn_implementation="eager")
    with pytest.raises(ValueError, match="flex_attention"):  # refused by transformers itself (not _supports_flex_attn)
        PATForOpenVocabSegmentation.from_pretrained(tmp_path, attn_implementation="flex_attention")
    config = tiny_config()
    config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="not supported.*scaled_dot_product_attention"):
        PATForOpenVocabSegmentation(config)
    with pytest.raises(ValueError, match="not supported"):
        model.set_attn_implementation("eager")


def test_output_attentions_and_unknown_keywords_are_refused(model, pixel_values):
    with pytest.raises(ValueError, match="output_attentions=True is not supported.*scaled_dot_product_attention"):
        model(pixel_values, output_attentions=True)
    with pytest.raises(TypeError, match="class_names"):
        model(pixel_values, class_names=["cat"])  # not a forward argument: get_class_embeddings takes names
    with torch.no_grad():
        assert isinstance(model(pixel_values, output_attentions=False, return_dict=False), tuple)


def test_image_side_model_takes_the_image_processors_outputs_and_refuses_other_keywords(pixel_values):
    from modeling_pat import PATImageProcessor

    model = PATModel(tiny_config()).eval()
    inputs = PATImageProcessor(do_resize=False)(images=list(pixel_values[:1].clamp(0, 1) * 255), return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)  # pixel_values, image_sizes, original_sizes
    assert outputs.masks_queries_logits.shape[0] == 1
    with pytest.raises(TypeError, match="class_names"):
        model(pixel_values, class_names=["cat"])
    with pytest.raises(ValueError, match="output_attentions=True is not supported"):
        model(pixel_values, output_attentions=True)
    with pytest.raises(ValueError, match=r"`image_sizes` must be an integer tensor of shape \(batch_size, 2\)"):
        model(pixel_values, image_sizes=torch.zeros(5, 2, dtype=torch.long))


def test_a_pat_model_saved_with_the_earlier_decoder_keys_still_loads(tmp_path):
    """The decoder's feed-forward keys were mlp.0 / mlp.2 before `PATFeedForward` (mlp.fc1 / mlp.fc2)."""
    import re

    from safetensors.torch import load_file, save_file

    model = tiny_model(preset="pat-tiny")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    old_names = {}
    for key, value in load_file(weights).items():
        if ".decoder." in key:
            key = re.sub(r"\.mlp\.fc1\.", ".mlp.0.", re.sub(r"\.mlp\.fc2\.", ".mlp.2.", key))
        old_names[key] = value
    assert sum(key.endswith(".mlp.0.weight") for key in old_names) == 5  # three stages and two extra layers
    save_file(old_names, weights, metadata={"format": "pt"})
    loaded, info = PATForOpenVocabSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(expected, actual), name
