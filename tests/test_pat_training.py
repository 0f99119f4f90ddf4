"""PAT learns on real photos: a few hundred Trainer steps of a tiny PAT on the ADE20K pairs in tests/fixtures.

Checks (issue: PAT tokenization): the reconstruction loss and the segmentation loss each fall by at least 30% from
their first logged values; at the end at least a quarter of every codebook is in use on these images (perplexity
printed per codebook); the standalone tokenizer's encode -> decode of a real photo beats the photo's mean-colour
image in PSNR (the reconstruction is written as a PNG to the artifact folder, `PAT_TEST_ARTIFACTS` or
`test-artifacts/` at the repository root).

The class names' text embeddings are fixed random unit vectors, passed as `class_embeddings`: they stand in for a
pretrained CLIP text tower. The tiny random one maps all 150 ADE names to nearly one point (mean pairwise cosine
0.97), so no image model could tell the classes apart and the classification term would stay at chance whatever PAT
learns. For the same reason the tiny CLIP's joint embedding is 32-d here instead of the preset's 8-d.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from modeling_pat import PATConfig, PATForOpenVocabSegmentation, PATImageProcessor, PATImageTokenizer
from modeling_pat.image_processing_pat import reduce_labels
from modeling_pat.apps.training import PATTrainer

from conftest import FIXTURES


ADE_STEMS = [
    "ade150_ADE_val_00000001", "ade150_ADE_val_00000002", "ade150_ADE_val_00000003",
    "ade150_ADE_train_00016869", "ade150_ADE_train_00016900", "ade150_ADE_train_00016964",
]
CROP = 128
STEPS = 300
ARTIFACTS = Path(os.environ.get("PAT_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


EMBED_DIM = 32


def training_config() -> PATConfig:
    config = PATConfig.from_preset("pat-tiny")
    config.clip_config = {**config.clip_config, "embed_dim": EMBED_DIM}
    config.codebook_sizes, config.latent_codebook_size = [32, 24, 16], 48
    names = json.loads((FIXTURES / "data/vocab/ade150.json").read_text())["names"]
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    return config


def ade_crops(processor: PATImageProcessor, crops_per_image: int = 4, seed: int = 0) -> list[dict]:
    """Real ADE20K photos, resized (shortest edge 160) and randomly cropped to 128x128, with ADE-150 labels."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for stem in ADE_STEMS:
        image = Image.open(FIXTURES / f"data/images/{stem}.jpg").convert("RGB")
        label = np.array(Image.open(FIXTURES / f"data/labels/{stem}.png"))
        inputs = processor(images=image, segmentation_maps=reduce_labels(torch.from_numpy(label).long()),
                           do_pad=False, return_tensors="pt")
        pixels, labels = inputs["pixel_values"][0], inputs["labels"][0]
        for _ in range(crops_per_image):
            top = int(torch.randint(0, pixels.shape[1] - CROP + 1, (1,), generator=generator))
            left = int(torch.randint(0, pixels.shape[2] - CROP + 1, (1,), generator=generator))
            samples.append({
                "pixel_values": pixels[:, top : top + CROP, left : left + CROP].clone(),
                "labels": labels[top : top + CROP, left : left + CROP].clone(),
            })
    return samples


def class_embeddings(num_classes: int, seed: int = 1) -> torch.Tensor:
    """(N, EMBED_DIM) fixed random unit vectors: distinct class embeddings (largest pairwise cosine about 0.6)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(num_classes, EMBED_DIM, generator=generator), dim=-1)


def collate_with(embeddings: torch.Tensor):
    """Stacks crops and labels and adds the batch's vocabulary, as `PATForOpenVocabSegmentation.forward` takes it."""
    def collate(samples: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "labels": torch.stack([s["labels"] for s in samples]),
            "class_embeddings": embeddings,
        }
    return collate


def first_and_last(history: list[dict], key) -> tuple[float, float]:
    values = [key(entry) for entry in history if "loss_ce" in entry]
    return values[0], values[-1]


SEGMENTATION_TERMS = ("loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0")


def segmentation_loss(entry: dict) -> float:
    """SAN's six weighted terms (final + auxiliary level)."""
    return sum(entry[k] for k in SEGMENTATION_TERMS)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def to_uint8(normalised: torch.Tensor, processor: PATImageProcessor) -> np.ndarray:
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    image = (normalised * std + mean).clamp(0, 1) * 255
    return image.round().byte().permute(1, 2, 0).numpy()


@pytest.mark.slow
def test_tiny_pat_learns_on_real_photos(tmp_path, capsys):
    torch.manual_seed(0)
    processor = PATImageProcessor(size={"shortest_edge": 160, "longest_edge": 640})
    dataset = ade_crops(processor)
    model = PATForOpenVocabSegmentation(training_config())
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-3,
        weight_decay=1e-4, lr_scheduler_type="constant", logging_steps=10, save_strategy="no", report_to="none",
        remove_unused_columns=False, use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    embeddings = class_embeddings(len(model.config.id2label))
    trainer = PATTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate_with(embeddings))
    trainer.train()
    history = trainer.state.log_history

    rec_first, rec_last = first_and_last(history, lambda e: e["loss_reconstruction"])
    seg_first, seg_last = first_and_last(history, segmentation_loss)
    print(f"losses: reconstruction {rec_first:.3f} -> {rec_last:.3f}, segmentation {seg_first:.3f} -> {seg_last:.3f}")
    assert "loss_vq_latent" in history[0] and "perplexity_early" in history[0]  # every term is logged
    assert rec_last <= 0.7 * rec_first, (rec_first, rec_last)
    assert seg_last <= 0.7 * seg_first, (seg_first, seg_last)

    # codebook usage over all training crops, with the trained weights
    model.eval()
    pixels = torch.stack([s["pixel_values"] for s in dataset])
    with torch.no_grad():
        out = model.model(pixels)
    sizes = dict(zip(("early", "mid", "late"), model.config.codebook_sizes), latent=model.config.latent_codebook_size)
    for name, size in sizes.items():
        used = out.codebook_indices[name].unique().numel()
        print(f"codebook {name}: {used}/{size} codes used, perplexity {float(out.codebook_perplexity[name]):.1f}")
        assert used >= size / 4, (name, used, size)

    # the standalone tokenizer, loaded from the trained checkpoint: encode -> decode a real photo
    model.save_pretrained(tmp_path / "trained")
    tokenizer = PATImageTokenizer.from_pretrained(tmp_path / "trained").eval()
    photo = Image.open(FIXTURES / "data/images/ade150_ADE_val_00000003.jpg").convert("RGB")
    inputs = PATImageProcessor(size={"shortest_edge": 128, "longest_edge": 512})(images=photo, return_tensors="pt")
    height, width = inputs["image_sizes"][0].tolist()
    reconstruction = tokenizer.decode(tokenizer.encode(inputs["pixel_values"]))[0, :, :height, :width]
    original = to_uint8(inputs["pixel_values"][0, :, :height, :width], processor)
    rebuilt = to_uint8(reconstruction, processor)
    mean_colour = np.broadcast_to(original.reshape(-1, 3).mean(0), original.shape)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([original, rebuilt], axis=1)).save(ARTIFACTS / "pat_tokenizer_round_trip.png")
    print(f"PSNR reconstruction {psnr(original, rebuilt):.2f} dB vs mean colour {psnr(original, mean_colour):.2f} dB")
    assert psnr(original, rebuilt) > psnr(original, mean_colour)
    with capsys.disabled():
        print("\n" + "\n".join(line for line in capsys.readouterr().out.splitlines() if "codebook" in line or "PSNR" in line or "losses" in line))
