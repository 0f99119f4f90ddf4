"""Segmentation data for training and evaluation: the benchmarks' own folder layouts, Hub datasets, SAN's
augmentation and a padding collator.

Every source becomes a `SegmentationSplit`: a `datasets.Dataset` with `image` and `label` columns (decoded lazily
as PIL images), the class names, the ignore value and a `LabelMapping` from the stored pixel values to class
indices. `SegmentationTrainDataset` / `SegmentationEvalDataset` turn a split into model inputs and
`SegmentationCollator` pads them into a batch.

Layouts (`load_split(kind, root, split)`; `root` is the dataset's own folder, by default `<data_root>/<folder>`
where `data_root` is detectron2's `DETECTRON2_DATASETS`, as SAN registers them):

| kind | folder | images | labels (values -> class index) | ignore |
|---|---|---|---|---|
| `coco171` (COCO-Stuff-164k) | `coco/` | `train2017/`, `val2017/` `*.jpg` | `stuffthingmaps_detectron2/{train2017,val2017}/*.png` (0..170); or the raw `stuffthingmaps/...` (COCO id - 1, mapped with the vocabulary's `pixel_value_to_index`) | 255 |
| `ade150` (ADE20K-150) | `ADEChallengeData2016/` | `images/{training,validation}/*.jpg` | `annotations_detectron2/{training,validation}/*.png` (0..149); or the raw `annotations/...` (1..150, 0 = other: v - 1, 0 -> 255) | 255 |
| `ade847` (ADE20K-847) | `ADE20K_2021_17_01/` | `images_detectron2/{training,validation}/*.jpg` | `annotations_detectron2/{training,validation}/*.tif` (16-bit, 0..846) | 65535 |
| `pc59` (Pascal Context-59) | `pcontext/` | `{train,val}/image/*.jpg` | `{train,val}/label/*.png` (0..58) | 255 |
| `pc459` (Pascal Context-459) | `pcontext_full/` | `{train,val}/image/*.jpg` | `{train,val}/label/*.tif` (16-bit, 0..458) | 65535 |
| `voc20` (Pascal VOC-20) | `VOC2012/` | `JPEGImages/*.jpg` | `annotations_detectron2/{train,val}/*.png` (0..19); or the raw `SegmentationClass/*.png` listed in `ImageSets/Segmentation/{train,val}.txt` (1..20, 0 = background: v - 1, 0 -> 255) | 255 |
| `folder` (your own classes) | any | `[<split>/]image/*` | `[<split>/]label/*.png` (class indices; `ignore_index` 255 unless `id2label.json` says otherwise) with `id2label.json` at the root | 255 |
| `hub` (Hub / local dataset repo) | a Hub id or a local folder | parquet or imagefolder with an image and a label column | class indices; `id2label.json` in the repo | 255 |

Modules: `labels` (id2label.json, label checks, `LabelMapping`), `splits` (the layouts below -> `SegmentationSplit`),
`augmentation` (SAN's training augmentation), `batches` (torch datasets, collator, epoch callback).

The `*_detectron2` folders are what SAN's / Mask2Former's preparation scripts write (`prepare_ade20k_sem_seg.py`,
`prepare_coco_stuff_164k_sem_seg.py`, SAN's `datasets/prepare_{voc,pcontext_59cls,pcontext_459cls}_sem_seg.py`,
`prepare_ade20k_full_sem_seg.py`); the raw folders are read directly where the mapping is a pure pixel-value lookup
(COCO-Stuff, ADE-150, VOC). ADE-847 and PC-459 need the preparation scripts (they decode the full ADE20K index and
the Pascal Context `.mat` files). Images and labels are paired by file stem (detectron2's `load_sem_seg`).

What is checked when (cheap whatever the dataset's size): `load_split` reads `id2label.json` strictly
(`read_id2label`), refuses an empty split and reads and checks the first label file (`check_split`); every label file
is checked again each time it is read (`SegmentationSplit.load`: one vectorised pass beside the image decoding).
A colour-coded (RGB) map or a value that is neither a class index nor the ignore value raises `LabelFileError`
naming the file (and the values); `palette_to_class_indices` converts colour-coded maps to class indices.
"""

from ...configuration_pat import load_vocabulary
from .augmentation import (
    hsv_uint8_to_rgb,
    photometric_distortion,
    resize_image,
    resize_label_nearest,
    rgb_to_hsv_uint8,
    SAN_TRAIN_SHORT_EDGES,
    SANTrainAugmentation,
)
from .batches import (
    EpochCallback,
    SegmentationCollator,
    SegmentationEvalDataset,
    SegmentationTrainDataset,
)
from .labels import (
    check_label_values,
    LabelFileError,
    LabelMapping,
    palette_to_class_indices,
    read_id2label,
    single_channel_label,
)
from .splits import (
    BenchmarkLayout,
    BENCHMARKS,
    check_split,
    DatasetSpec,
    default_data_root,
    FOLDER_OPTIONS,
    HUB_OPTIONS,
    IMAGE_COLUMNS,
    IMAGE_EXTENSIONS,
    KIND_ALIASES,
    LABEL_COLUMNS,
    LABEL_EXTENSIONS,
    load_benchmark,
    load_folder,
    load_hub_dataset,
    load_split,
    pair_files,
    SegmentationSplit,
    SPLIT_ALIASES,
)


__all__ = [
    "BenchmarkLayout",
    "BENCHMARKS",
    "check_label_values",
    "check_split",
    "DatasetSpec",
    "default_data_root",
    "EpochCallback",
    "FOLDER_OPTIONS",
    "hsv_uint8_to_rgb",
    "HUB_OPTIONS",
    "IMAGE_COLUMNS",
    "IMAGE_EXTENSIONS",
    "KIND_ALIASES",
    "LABEL_COLUMNS",
    "LABEL_EXTENSIONS",
    "LabelFileError",
    "LabelMapping",
    "load_benchmark",
    "load_folder",
    "load_hub_dataset",
    "load_split",
    "load_vocabulary",
    "pair_files",
    "palette_to_class_indices",
    "photometric_distortion",
    "read_id2label",
    "resize_image",
    "resize_label_nearest",
    "rgb_to_hsv_uint8",
    "SAN_TRAIN_SHORT_EDGES",
    "SANTrainAugmentation",
    "SegmentationCollator",
    "SegmentationEvalDataset",
    "SegmentationSplit",
    "SegmentationTrainDataset",
    "single_channel_label",
    "SPLIT_ALIASES",
]
