"""Check the port against golden reference-SAN data (a folder in the format of `tests/fixtures/san_tiny/`).

    python conversion_scripts/check_san_parity.py tests/fixtures/san_tiny

The folder's `config.json` describes the whole configuration; nothing here is specific to one golden case. Steps:
1. build the PATConfig from `config.json` and convert `reference_state_dict.safetensors` with the converter's code;
2. eval pass: the PNGs through `PATImageProcessor` (`do_resize=False`: they are exact model inputs) and
   `PATProcessor` (class names), the model's forward with hooks recording the intermediates, post-processing to
   the recorded output sizes;
3. training pass: the model's own training forward with `labels` from `gt_label_*.png` and the recorded random
   points injected through `loss_sampling_points`, then one backward for the recorded gradients;
4. compare EVERY tensor of `inference_io.safetensors` and `training_io.safetensors` and every loss in
   `expected_losses.json`, print one row each, and exit 1 if any exceeds its tolerance or was left uncompared.

Tolerance: 1e-5 max abs difference, or 10x the reference's own thread-to-thread noise recorded in `config.json`
when that is larger (capped at 1e-4). Integer tensors (token ids, label maps, matched indices) must be identical;
`mask_loss_points` are compared as sets per mask (the reference's top-k order varies between thread counts).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modeling_pat.apps.conversion import (  # noqa: E402
    config_from_reference_json,
    convert_state_dict,
    load_converted_weights,
    rename_key,
)
from modeling_pat.clip_tower import build_recognition_attention_mask  # noqa: E402
from modeling_pat import PATForOpenVocabSegmentation, PATProcessor  # noqa: E402


DEFAULT_ATOL = 1e-5
MAX_ATOL = 1e-4


class Recorder:
    """Forward hooks that keep the last input/output of chosen modules under golden tensor names."""

    def __init__(self):
        self.values, self.handles = {}, []

    def output(self, module, name, transform=lambda x: x):
        self.handles.append(module.register_forward_hook(lambda m, a, out: self.values.__setitem__(name, transform(out))))

    def input(self, module, name, transform=lambda x: x):
        self.handles.append(module.register_forward_pre_hook(lambda m, a: self.values.__setitem__(name, transform(a[0]))))

    def kwarg(self, module, key, name):
        def hook(m, args, kwargs):
            self.values[name] = kwargs[key]

        self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def load_golden(folder: Path):
    description = json.loads((folder / "config.json").read_text())
    return (
        description,
        load_file(str(folder / "inference_io.safetensors")),
        load_file(str(folder / "training_io.safetensors")),
        json.loads((folder / "expected_losses.json").read_text()),
    )


def build_model(folder: Path, description: dict) -> PATForOpenVocabSegmentation:
    """Config from the golden description, weights through the converter's own code path."""
    config = config_from_reference_json(description)
    model = PATForOpenVocabSegmentation(config)
    load_converted_weights(model, convert_state_dict(load_file(str(folder / "reference_state_dict.safetensors")), config))
    return model


def read_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def attach_eval_hooks(model, recorder: Recorder) -> None:
    """Record the intermediates the golden README names, from the model's own modules."""
    tower, side = model.model.clip_tower, model.model.side_adapter
    recorder.input(tower.visual.conv1, "clip.input")
    recorder.input(tower.visual.ln_pre, "clip.embeddings_before_ln_pre")
    recorder.output(side.patch_embed, "side.patch_embed", lambda y: y.flatten(2).transpose(1, 2))
    for name, fusion in side.fusion_layers.items():
        recorder.output(fusion.proj, f"side.fusion.{name}.proj")  # before the resize to the side grid
    decoder = side.mask_decoder
    recorder.output(decoder.query_mlp, "side.decoder.query_mlp")
    recorder.output(decoder.pix_mlp, "side.decoder.pix_mlp")
    # the model never builds attn_mlp's full output (the attention bias is re-associated, see
    # `PATMaskDecoder.attention_bias`): the module is run on the patch map that pix_mlp receives
    recorder.input(decoder.pix_mlp, "side.decoder.attn_mlp", decoder.attn_mlp)
    recorder.output(decoder, "side.attn_bias", lambda out: out[1][0])


def recognition_intermediates(model, clip_tokens: torch.Tensor, attn_bias: torch.Tensor, grid) -> dict:
    """SAN's recognition intermediates: its whole additive mask and every block's output over all tokens.

    The model never builds them (its mask stays in two row groups and its last block computes the [SOS] rows only;
    `rec.mask_embeddings` checks that path): the blocks' own forward is run here, as SAN's head runs them, on the
    recorded last CLIP trunk tokens (B, 1 + L_clip, C_clip) and attention bias.
    """
    tower, q = model.model.clip_tower, model.config.num_queries
    mask = build_recognition_attention_mask(attn_bias, grid, tower.num_heads, tower.mask_value, tower.downsample_method)
    x = torch.cat([clip_tokens[:, :1].expand(-1, q, -1), clip_tokens], dim=1)  # [SOS x Q; cls; patches]
    ours = {"rec.attn_mask": mask}
    for i, block in enumerate(tower.recognition_blocks):
        x = block(x, attn_mask=mask)
        ours[f"rec.block.{i}.output"] = x.transpose(0, 1)  # golden layout is (L, B, C)
    return ours


def run_inference(model, processor, folder: Path, description: dict) -> dict:
    """Eval pass -> {golden name: our tensor}."""
    config = model.config
    images = [read_rgb(folder / item["file"]) for item in description["images"]]
    output_sizes = torch.tensor([[item["output_height"], item["output_width"]] for item in description["images"]])
    class_names = description["class_names"]
    inputs = processor(images=images, text=class_names, return_tensors="pt")
    ours = {
        "input.batch": inputs["pixel_values"],
        "input.image_sizes": inputs["image_sizes"],
        "input.output_sizes": output_sizes,
        "text.token_ids": inputs["input_ids"].transpose(0, 1),  # ours (N, T, L); golden (T, N, L)
    }
    tower = model.model.clip_tower
    with torch.no_grad():
        ids = inputs["input_ids"]
        per_template = tower.encode_text(ids.reshape(-1, ids.shape[-1])).reshape(*ids.shape[:2], -1)
        class_embeddings = tower.encode_class_names(ids)
        classifier = model.classifier(class_embeddings)
        scale = tower.logit_scale.exp()
        ours.update({
            "text.template_embeddings": per_template.transpose(0, 1),
            "text.class_embeddings": class_embeddings,
            "text.classifier": classifier,
            "text.logit_scale_exp": scale,
            "text.classifier_scaled": scale * classifier,
        })
        recorder = Recorder()
        attach_eval_hooks(model, recorder)
        outputs = model(
            pixel_values=inputs["pixel_values"], input_ids=ids, image_sizes=inputs["image_sizes"],
            output_hidden_states=True,
        )
        hidden = model.model(inputs["pixel_values"], output_hidden_states=True)
        recorder.remove()
        ours.update(recorder.values)
        grid = [size // tower.patch_size for size in ours["clip.input"].shape[-2:]]
        ours.update(recognition_intermediates(model, hidden.clip_hidden_states[-1], ours["side.attn_bias"], grid))
    ours.update({
        "side.mask_logits": outputs.masks_queries_logits,
        "rec.mask_embeddings": outputs.mask_embeddings,
        "pred.class_logits": outputs.class_queries_logits,
    })
    h, w = (size // tower.patch_size for size in ours["clip.input"].shape[-2:])
    for i, state in enumerate(hidden.clip_hidden_states):
        b, _, c = state.shape
        ours[f"clip.features.{i}.map"] = state[:, 1:].transpose(1, 2).reshape(b, c, h, w)
        ours[f"clip.features.{i}.cls_token"] = state[:, :1].transpose(0, 1)
    q = config.num_queries
    h, w = outputs.masks_queries_logits.shape[-2:]
    for i, state in enumerate(hidden.side_hidden_states):
        if i in model.model.side_adapter.fusion_map:  # patch tokens after block i and its fusion
            ours[f"side.fusion.layer_{i}.output"] = state[:, q:]
        ours[f"side.out.{i}.query"] = state[:, :q]
        ours[f"side.out.{i}.x"] = state[:, q:].transpose(1, 2).reshape(state.shape[0], -1, h, w)
    results = processor.post_process_semantic_segmentation(
        outputs, target_sizes=output_sizes.tolist(), return_segmentation_scores=True
    )
    for i, result in enumerate(results):
        ours[f"pred.sem_seg.{i}"] = _get(result, "segmentation_scores")
        ours[f"pred.label_map.{i}"] = _get(result, "segmentation")
    return ours


def _get(result, key):
    return result[key] if isinstance(result, dict) else getattr(result, key)


def run_training(model, processor, folder: Path, description: dict, training: dict) -> tuple[dict, dict]:
    """Training pass with the recorded random points injected -> ({golden name: tensor}, unweighted losses)."""
    images = [read_rgb(folder / item["file"]) for item in description["images"]]
    labels = [np.array(Image.open(folder / item["gt_file"])) for item in description["images"]]
    inputs = processor(images=images, text=description["class_names"], segmentation_maps=labels, return_tensors="pt")
    levels = ["final"] + [f"aux{i}" for i in range(len(description["side_adapter"]["deep_supervision_idxs"]) - 1)]
    num_images = len(images)
    points = {
        level: {
            "matcher_points": [training[f"train.{level}.matcher_points.{i}"] for i in range(num_images)],
            "oversampled_points": training[f"train.{level}.mask_loss_oversampled_points"],
            "random_points": training[f"train.{level}.mask_loss_random_points"],
        }
        for level in levels
    }
    records = {}
    handle = model.criterion.register_forward_hook(lambda m, a, out: records.update(criterion=out))
    model.train()
    model.zero_grad()
    outputs = model(
        pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], labels=inputs["labels"],
        loss_sampling_points=points,
    )
    handle.remove()
    outputs.loss.backward()
    total, weighted, unweighted, level_records = records["criterion"]
    ours = {"train.loss.total": total}
    ours.update({f"train.loss.{k}": v for k, v in weighted.items()})
    predictions = [(outputs.class_queries_logits, outputs.masks_queries_logits)] + [
        (aux["class_queries_logits"], aux["masks_queries_logits"]) for aux in outputs.auxiliary_logits or []
    ]
    for level, (logits, masks) in zip(levels, predictions):
        ours[f"train.{level}.pred_logits"], ours[f"train.{level}.pred_masks"] = logits, masks
        record = level_records[level]
        ours[f"train.{level}.mask_loss_points"] = record.mask_points
        ours[f"train.{level}.mask_loss_oversampled_points"] = points[level]["oversampled_points"]
        ours[f"train.{level}.mask_loss_random_points"] = points[level]["random_points"]
        for i, match in enumerate(record.matches):
            ours[f"train.{level}.matcher_points.{i}"] = points[level]["matcher_points"][i]
            ours[f"train.{level}.matcher_cost.{i}"] = match.cost
            ours[f"train.{level}.matched_indices.{i}"] = torch.stack([match.query_ids, match.target_ids])
    from modeling_pat.segmentation_loss import labels_to_targets

    targets = labels_to_targets(inputs["labels"], len(description["class_names"]), model.config.ignore_index)
    for i, target in enumerate(targets):
        ours[f"train.target.{i}.labels"] = target.class_ids
        ours[f"train.target.{i}.masks_padded"] = target.masks
    parameters = dict(model.named_parameters())
    for name in training:
        if name.startswith("train.grad."):
            ours[name] = parameters[rename_key(name[len("train.grad."):], model.config.clip_feature_layers)].grad
    return ours, unweighted


def tolerance(name: str, description: dict) -> float:
    """1e-5, unless the reference's own 1-vs-2-thread noise for this file is larger: then 10x it, at most 1e-4."""
    noise = description.get("determinism", {}).get("threads_1_vs_2", {})
    source = "training_io.safetensors" if name.startswith("train.") or name.startswith("loss") else "inference_io.safetensors"
    file_noise = (noise.get(source) or {}).get("max_abs_diff") or 0.0
    return DEFAULT_ATOL if file_noise <= DEFAULT_ATOL else min(10 * file_noise, MAX_ATOL)


def _sort_points(points: torch.Tensor) -> torch.Tensor:
    """(M, P, 2) -> the same points, sorted lexicographically by (x, y) within each mask."""
    rows = [p[np.lexsort((p[:, 1].numpy(), p[:, 0].numpy()))] for p in points]
    return torch.stack(rows)


def compare(name: str, golden: torch.Tensor, ours, atol: float) -> tuple[bool, str]:
    """-> (passed, description of the difference)."""
    if ours is None:
        return False, "not produced"
    ours = ours.detach().cpu()
    if tuple(ours.shape) != tuple(golden.shape):
        return False, f"shape {tuple(ours.shape)} vs golden {tuple(golden.shape)}"
    if name.endswith("mask_loss_points"):  # same point sets per mask; order may differ
        ours, golden = _sort_points(ours), _sort_points(golden)
    if not golden.is_floating_point():
        same = torch.equal(ours.to(golden.dtype), golden)
        return same, "identical" if same else f"{(ours.to(golden.dtype) != golden).sum().item()} elements differ"
    diff = (ours.to(golden.dtype) - golden).abs().max().item() if golden.numel() else 0.0
    return diff <= atol, f"max abs diff {diff:.3g} (atol {atol:.0e})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("golden_folder", type=Path)
    args = parser.parse_args(argv)
    folder = args.golden_folder
    description, inference, training, expected = load_golden(folder)
    torch.manual_seed(0)
    model = build_model(folder, description).eval()
    processor = PATProcessor.from_config(model.config, do_resize=False)

    ours = run_inference(model, processor, folder, description)
    train_ours, unweighted = run_training(model, processor, folder, description, training)
    ours.update(train_ours)

    rows, failures = [], []
    for name, golden in list(inference.items()) + list(training.items()):
        atol = tolerance(name, description)
        passed, detail = compare(name, golden, ours.get(name), atol)
        rows.append((name, passed, detail))
        failures += [] if passed else [name]
    losses = expected["unweighted_losses_from_the_criterion"]
    for key, value in losses.items():
        diff = abs(unweighted[key].item() - value)
        passed = diff <= tolerance(key, description)
        rows.append((f"expected_losses.unweighted.{key}", passed, f"max abs diff {diff:.3g}"))
        failures += [] if passed else [key]
    for key, value in expected["weighted_losses_as_returned_by_the_model"].items():
        diff = abs(train_ours[f"train.loss.{key}"].item() - value)
        passed = diff <= tolerance(key, description)
        rows.append((f"expected_losses.weighted.{key}", passed, f"max abs diff {diff:.3g}"))
        failures += [] if passed else [key]
    for i, item in enumerate(description["images"]):  # the PNG copies of the label maps
        png = torch.from_numpy(np.array(Image.open(folder / item["pred_file"])))
        passed, detail = compare(item["pred_file"], png, ours[f"pred.label_map.{i}"], 0.0)
        rows.append((item["pred_file"], passed, detail))
        failures += [] if passed else [item["pred_file"]]

    width = max(len(name) for name, _, _ in rows)
    for name, passed, detail in rows:
        print(f"{'ok  ' if passed else 'FAIL'} {name:<{width}}  {detail}")
    print(f"parity: {len(rows) - len(failures)} of {len(rows)} tensors within tolerance; failing: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
