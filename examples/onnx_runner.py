"""Semantic segmentation with an exported SAN / PAT model and onnxruntime alone: no PyTorch, no transformers.

    python -m modeling_pat.export --model san-vit-b16-hf --output san.onnx --vocabulary ade150 --dynamic-size
    python examples/onnx_runner.py san.onnx samples/*.png --output-dir onnx_outputs

Needs numpy, Pillow and onnxruntime. The vocabulary is the one exported beside the model (`san.embeddings.npy`,
`san.labels.json`; or `--embeddings` / `--labels-file`). For every image it writes `<stem>_labels.png` (class index
per pixel, 8-bit, 16-bit above 256 classes) and prints the classes present with their pixel shares.

The pre- and post-processing repeat `PATImageProcessor`'s in numpy (this file must not import the package, which
imports PyTorch): shortest-edge resize (bilinear with antialiasing, as PIL and torchvision do it for 8-bit images),
CLIP normalisation, zero padding at the bottom / right; then mask logits resized bilinearly to the padded input,
cropped to the image, resized to the original size, and scored as sum_q softmax(class)[q, c] * sigmoid(mask)[q]
(void dropped after the softmax), argmax over classes. The settings come from the ONNX file's metadata.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps


ROW_BAND = 64  # output rows scored at once: the (classes, rows, width) block stays small for large images


# -- model and vocabulary ---------------------------------------------------------------------------------------------
def load_session(model_path, threads: int | None = None) -> tuple[onnxruntime.InferenceSession, dict]:
    """(CPU session, preprocessing settings from the model's metadata)."""
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    if "modeling_pat.preprocessing" not in metadata:
        raise ValueError(f"{model_path} has no modeling_pat.preprocessing metadata: export it with "
                         "python -m modeling_pat.export.")
    return session, json.loads(metadata["modeling_pat.preprocessing"])


def load_vocabulary(model_path, embeddings_path=None, labels_path=None) -> tuple[list[str], np.ndarray]:
    """(class names, float32 (N, D) unit embeddings) exported beside `model.onnx` (`model.embeddings.npy`,
    `model.labels.json`) or from the given files."""
    model_path = Path(model_path)
    embeddings_path = Path(embeddings_path or model_path.with_suffix(".embeddings.npy"))
    labels_path = Path(labels_path or model_path.with_suffix(".labels.json"))
    for path in (embeddings_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: export with --labels or --vocabulary to write it.")
    labels = json.loads(labels_path.read_text(encoding="utf-8"))["labels"]
    embeddings = np.load(embeddings_path, allow_pickle=False).astype(np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"{embeddings_path} holds {embeddings.shape} embeddings for {len(labels)} labels.")
    return labels, embeddings


# -- preprocessing ----------------------------------------------------------------------------------------------------
def read_image(path) -> Image.Image:
    """An image file -> 8-bit RGB, upright (EXIF), transparency composited over white."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA", "P") or "transparency" in image.info:
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")


def resized_size(height: int, width: int, shortest_edge: int, longest_edge: int | None) -> tuple[int, int]:
    """(H, W) after the shortest-edge resize: short side to shortest_edge, long side capped, rounded half up."""
    scale = shortest_edge / min(height, width)
    new_height, new_width = (float(shortest_edge), scale * width) if height < width else (scale * height,
                                                                                          float(shortest_edge))
    if longest_edge is not None and max(new_height, new_width) > longest_edge:
        cap = longest_edge / max(new_height, new_width)
        new_height, new_width = new_height * cap, new_width * cap
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def padded_size(sizes, settings: dict) -> tuple[int, int]:
    """The batch's padded (Hp, Wp): the export's fixed size, else the largest H and W rounded up to the divisor."""
    if settings.get("pad_size"):
        return tuple(settings["pad_size"])
    divisor = max(1, settings["size_divisibility"])
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def normalise(image: np.ndarray, settings: dict) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, with the processor's constants (mean and std / rescale_factor, rounded
    to float32 from float64), so the values are bit for bit the processor's."""
    scale = 1.0 / settings["rescale_factor"]
    mean = (np.asarray(settings["image_mean"], dtype=np.float64) * scale).astype(np.float32)
    std = (np.asarray(settings["image_std"], dtype=np.float64) * scale).astype(np.float32)
    pixels = image.astype(np.float32).transpose(2, 0, 1)
    return (pixels - mean[:, None, None]) / std[:, None, None]


def preprocess(images: list[Image.Image], settings: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """RGB images -> ((B, 3, Hp, Wp) float32 pixel values, [(h, w)] resized sizes inside the padding)."""
    arrays = []
    for image in images:
        if settings["do_resize"]:
            size = resized_size(image.height, image.width, settings["shortest_edge"], settings["longest_edge"])
            if size != (image.height, image.width):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arrays.append(normalise(np.asarray(image, dtype=np.uint8), settings))
    sizes = [a.shape[1:] for a in arrays]
    height, width = padded_size(sizes, settings)
    if any(h > height or w > width for h, w in sizes):
        raise ValueError(f"an image resized to {max(sizes)} does not fit the model's fixed size {(height, width)}.")
    batch = np.zeros((len(arrays), 3, height, width), dtype=np.float32)
    for index, array in enumerate(arrays):
        batch[index, :, : array.shape[1], : array.shape[2]] = array
    return batch, [tuple(s) for s in sizes]


# -- post-processing --------------------------------------------------------------------------------------------------
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 matrix of a 1-D bilinear resize with half-pixel centres (align_corners=False)."""
    matrix = np.zeros((out_size, in_size))
    if in_size == out_size:
        np.fill_diagonal(matrix, 1.0)
        return matrix
    source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight = np.clip(source - first, 0.0, 1.0)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, first), 1.0 - weight)
    np.add.at(matrix, (rows, second), weight)
    return matrix


def resize_chain(in_size: int, padded: int, image: int, output: int) -> np.ndarray:
    """(output, in) float32 matrix along one axis: resize to the padded input, crop to the image, resize to output."""
    matrix = bilinear_matrix(in_size, padded)[:image]
    if output != image:
        matrix = bilinear_matrix(image, output) @ matrix
    return matrix.astype(np.float32)


def semantic_segmentation(class_logits: np.ndarray, mask_logits: np.ndarray, padded: tuple[int, int],
                          image_size: tuple[int, int], output_size: tuple[int, int],
                          return_scores: bool = False):
    """One image: class_logits (Q, C+1), mask_logits (Q, h, w) -> (H, W) int64 label map at output_size, and with
    `return_scores` the (C, H, W) float32 scores too."""
    logits = class_logits.astype(np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (probs / probs.sum(axis=-1, keepdims=True))[:, :-1].T.astype(np.float32)  # (C, Q), void dropped
    rows = resize_chain(mask_logits.shape[1], padded[0], image_size[0], output_size[0])  # (H, h)
    columns = resize_chain(mask_logits.shape[2], padded[1], image_size[1], output_size[1])  # (W, w)
    narrow = np.einsum("qhw,Ww->qhW", mask_logits.astype(np.float32), columns)  # width first, at low resolution
    labels = np.empty(output_size, dtype=np.int64)
    scores = np.empty((probs.shape[0], *output_size), dtype=np.float32) if return_scores else None
    for top in range(0, output_size[0], ROW_BAND):
        band = np.einsum("Hh,qhW->qHW", rows[top : top + ROW_BAND], narrow)
        band = 1.0 / (1.0 + np.exp(-band))  # sigmoid after the resize, as the processor does
        band_scores = np.einsum("cq,qHW->cHW", probs, band)
        labels[top : top + ROW_BAND] = band_scores.argmax(axis=0)
        if return_scores:
            scores[:, top : top + ROW_BAND] = band_scores
    return (labels, scores) if return_scores else labels


# -- inference --------------------------------------------------------------------------------------------------------
def segment(session, settings: dict, images: list[Image.Image], embeddings: np.ndarray) -> list[np.ndarray]:
    """RGB images -> label maps at each image's own size. A fixed-batch export runs them in groups of its batch size
    (the last group filled up with copies of its last image, whose results are dropped)."""
    group = settings.get("batch_size") or len(images)
    label_maps = []
    for start in range(0, len(images), group):
        chunk = images[start : start + group]
        pixel_values, sizes = preprocess(chunk + [chunk[-1]] * (group - len(chunk)), settings)
        masks, classes = session.run(
            ["masks_queries_logits", "class_queries_logits"],
            {"pixel_values": pixel_values, "class_embeddings": embeddings.astype(np.float32)},
        )
        padded = pixel_values.shape[-2:]
        for index, image in enumerate(chunk):
            output = (image.height, image.width)
            label_maps.append(semantic_segmentation(classes[index], masks[index], padded, sizes[index], output))
    return label_maps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Segment images with an exported SAN / PAT model (onnxruntime).")
    parser.add_argument("model", type=Path, help="the .onnx file written by python -m modeling_pat.export")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--embeddings", type=Path, help="class embeddings .npy (default: beside the model)")
    parser.add_argument("--labels-file", type=Path, help="class names .json (default: beside the model)")
    parser.add_argument("--output-dir", type=Path, default=Path("onnx_outputs"), help="default: onnx_outputs/")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args(argv)
    session, settings = load_session(args.model, args.threads)
    labels, embeddings = load_vocabulary(args.model, args.embeddings, args.labels_file)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        label_map = segment(session, settings, [read_image(path)], embeddings)[0]
        dtype = np.uint8 if len(labels) <= 256 else np.uint16
        Image.fromarray(label_map.astype(dtype)).save(args.output_dir / f"{path.stem}_labels.png")
        shares = np.bincount(label_map.ravel(), minlength=len(labels)) / label_map.size
        present = ", ".join(f"{labels[i]} {shares[i]:.1%}" for i in np.argsort(-shares) if shares[i] > 0)
        print(f"{path}: {present}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
