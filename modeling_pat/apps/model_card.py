"""Hub-ready model cards (`README.md`) for saved SAN/PAT folders, written with `huggingface_hub.ModelCard`.

    from modeling_pat import write_model_card

    write_model_card(
        "san-vit-b16-hf",
        converted_from="Mendel192/san",
        source_checkpoint="san_vit_b_16.pth",
        eval_results=[{"dataset_name": "ADE20K-150", "dataset_type": "scene_parse_150", "dataset_split": "validation",
                       "mean_iou": 27.5}],
    )

The YAML metadata carries `library_name: transformers`, `pipeline_tag: image-segmentation`, the licence, tags,
datasets, `base_model`, `metrics: [mean_iou]` and, with evaluation results, a `model-index`. Nothing here touches the
network (`ModelCard.validate()` would POST to the Hub, so it is never called).
"""

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..atomic_files import atomic_path
from ..configuration_pat import PATConfig
from ..weights_files import bad_weights_error


logger = logging.getLogger(__name__)

# open_clip architecture -> Hub id of the same (OpenAI) CLIP weights, the default `base_model`.
CLIP_BASE_MODELS = {
    "ViT-B-16": "openai/clip-vit-base-patch16",
    "ViT-L-14-336": "openai/clip-vit-large-patch14-336",
}
BASE_TAGS = ["vision", "image-segmentation", "semantic-segmentation", "open-vocabulary", "clip"]
EVAL_RESULT_KEYS = {"dataset_name", "dataset_type", "dataset_split", "dataset_config", "mean_iou"}
OFFICIAL_SAN_REPO = "Mendel192/san"
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SAN_CITATION = """@inproceedings{xu2023side,
  title     = {Side Adapter Network for Open-Vocabulary Semantic Segmentation},
  author    = {Xu, Mengde and Zhang, Zheng and Wei, Fangyun and Hu, Han and Bai, Xiang},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""
PAT_CITATION = """@article{zhang2024pat,
  title   = {Incorporating Feature Pyramid Tokenization and Open Vocabulary Semantic Segmentation},
  author  = {Zhang, Jianyu and Zhang, Li and Li, Shijian},
  journal = {arXiv preprint arXiv:2412.14145},
  year    = {2024}
}"""

SAN_SUMMARY = (
    "**SAN** (Side Adapter Network, Xu et al., CVPR 2023) for open-vocabulary semantic segmentation. A small side "
    "network attached to a frozen CLIP model predicts mask proposals and attention biases; the biases steer CLIP's "
    "last layers so that each proposal gets its own CLIP embedding, which is classified against CLIP text embeddings "
    "of class names. The class names are chosen at inference time, so the model is not limited to the classes it "
    "was trained on."
)
PAT_SUMMARY = (
    "**PAT** (Feature Pyramid Tokenization, arXiv 2412.14145) for open-vocabulary semantic segmentation. PAT builds "
    "on SAN (a side network attached to a frozen CLIP model, whose mask proposals are classified against CLIP text "
    "embeddings of class names chosen at inference time) and adds feature-pyramid tokenization: multi-resolution "
    "CLIP features are clustered by learnable codebooks and decoded by a pixel-reconstruction branch and a semantic "
    "branch that guides the segmentation."
)

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

This checkpoint is in the `transformers` format of the `modeling_pat` package (`PATForOpenVocabSegmentation`,
{{ mode_name }} mode: `use_pyramid_tokenization: {{ pyramid }}`).

## Model description

| | |
|---|---|
| Architecture | {{ mode_name }}{% if mode_name == "PAT" %} (feature-pyramid tokenization on top of SAN){% endif %} |
| CLIP | {{ clip_line }} |
| Side adapter | {{ side_layers }} layers, width {{ side_width }}, {{ num_queries }} mask queries |
{%- if pyramid_line %}
| Pyramid tokenization | {{ pyramid_line }} |
{%- endif %}
{%- if num_parameters %}
| Parameters | {{ num_parameters }} (CLIP included) |
{%- endif %}
| Default vocabulary | {{ vocabulary_line }} |
| Prompt templates | {{ num_templates }} (each class name is embedded as the mean over them) |

## Intended uses and limitations

Use it to segment images into regions named by class names you choose, e.g. "cat, sofa, floor", including classes
that were not in the training data, and for research on open-vocabulary segmentation.

Limitations:

- Every pixel is assigned exactly one of the given names: there is no "other" or "unknown" output, so leave no
  visible class out (or add a catch-all name such as "background").
- Recognition comes from CLIP: rare, abstract or very fine-grained names, and names that overlap ("car" and
  "vehicle"), are less reliable, and prompt wording matters. CLIP's and the training data's biases carry over.
- Masks are predicted on a grid of stride {{ side_patch_size }} and upsampled, so thin structures and boundaries
  are coarse.
- Not suitable for safety-critical decisions (medical, surveillance, driving) without separate validation.

## How to use

With the `modeling_pat` package installed (`import modeling_pat` registers the model classes and an
image-segmentation pipeline that accepts `candidate_labels`):

```python
import modeling_pat  # noqa: F401
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{{ repo_id }}")
segments = segmenter("photo.jpg", candidate_labels=["cat", "sofa", "floor", "wall"])
for segment in segments:  # one entry per class present: label and a PIL mask at the image size (score None)
    print(segment["label"], segment["mask"].size)

# scored segments: one entry per instance ("panoptic": stuff classes merged), best score first
for segment in segmenter("photo.jpg", candidate_labels=["cat", "sofa"], subtask="instance", threshold=0.5):
    print(segment["label"], round(segment["score"], 3))

segmenter("photo.jpg")  # without candidate_labels: the default vocabulary in config.id2label
```

Without the package, through the code stored in this repository (`trust_remote_code=True`):

```python
import torch
from PIL import Image
from transformers import AutoModelForSemanticSegmentation, AutoProcessor

model = AutoModelForSemanticSegmentation.from_pretrained("{{ repo_id }}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{{ repo_id }}", trust_remote_code=True)

class_names = ["cat", "sofa", "floor", "wall"]
inputs = processor(images=Image.open("photo.jpg").convert("RGB"), text=class_names, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
label_map = processor.post_process_semantic_segmentation(outputs, target_sizes=inputs["original_sizes"].tolist())[0]
```

`pipeline("image-segmentation", model="{{ repo_id }}", trust_remote_code=True)` also loads without the package, but
that is transformers' stock pipeline: it ignores `candidate_labels` and segments with `config.id2label`.

## Training

{{ training_section }}

## Evaluation

{{ evaluation_section }}

## Citation

```bibtex
{{ citations }}
```
"""


def write_model_card(
    model_dir,
    *,
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    eval_results: list[dict] | None = None,
    license: str = "mit",
    training_summary: str | None = None,
    tags: list[str] | None = None,
    model_name: str | None = None,
    repo_id: str | None = None,
    converted_from: str | None = None,
    source_checkpoint: str | None = None,
    source_sha256: str | None = None,
) -> Path:
    """Write `model_dir/README.md` for the saved SAN/PAT model in `model_dir` and return its path.

    Args:
        model_dir: a `save_pretrained` folder (its `config.json` decides SAN vs PAT wording and the description).
        base_model: Hub id of the CLIP weights; default: derived from `config.clip_model_name` when known.
        datasets: Hub dataset id(s) the model was trained on.
        eval_results: dicts with `dataset_name`, `dataset_type` (Hub dataset id), `mean_iou` (in percent, as
            the papers report it) and optionally `dataset_split`, `dataset_config`; written as the `model-index`.
        license: Hub licence id; "mit" is the licence of the SAN code and released weights. Pass the licence
            that covers your weights.
        training_summary: Markdown for the "Training" section (data, recipe).
        tags: extra tags, added to vision / image-segmentation / semantic-segmentation / open-vocabulary / clip /
            san or pat.
        model_name: the card's title and `model-index` name (default: the folder name).
        repo_id: the Hub id used in the usage snippets (default: `model_name`).
        converted_from: Hub repo (or URL / path) of the original checkpoint the weights were converted from, e.g.
            "Mendel192/san"; the "Training" section then says so.
        source_checkpoint: the checkpoint file inside `converted_from`, e.g. "san_vit_b_16.pth".
        source_sha256: that file's sha256, recorded so the source of the weights can be checked.
    """
    model_dir = Path(model_dir)
    config = PATConfig.from_pretrained(model_dir)
    is_pat = bool(config.use_pyramid_tokenization)
    model_name = model_name or model_dir.resolve().name
    base_model = base_model or CLIP_BASE_MODELS.get(config.clip_model_name)
    results = [_eval_result(entry) for entry in eval_results or []]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=license,
        tags=BASE_TAGS + ["pat" if is_pat else "san"] + list(tags or []),
        datasets=datasets,
        base_model=base_model,
        metrics=["mean_iou"],
        model_name=model_name,
        eval_results=results or None,
    )
    if not _has_remote_code(model_dir):
        logger.warning(
            "%s has no `auto_map` in config.json: the card's trust_remote_code example will not work. Call "
            "modeling_pat.register_for_auto_classes() before save_pretrained to ship the code.", model_dir
        )
    card = ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_name=model_name,
        repo_id=repo_id or model_name,
        summary=PAT_SUMMARY if is_pat else SAN_SUMMARY,
        mode_name="PAT" if is_pat else "SAN",
        pyramid=str(is_pat).lower(),
        training_section=_training_section(
            training_summary, datasets, converted_from, source_checkpoint, source_sha256
        ),
        evaluation_section=_evaluation_section(results),
        citations=SAN_CITATION + ("\n\n" + PAT_CITATION if is_pat else ""),
        num_parameters=_count_parameters(model_dir),
        **_description(config, is_pat, base_model),
    )
    path = model_dir / "README.md"
    with atomic_path(path) as temporary:  # never a half-written card in place of the previous one
        card.save(temporary)
    return path


def _eval_result(entry: dict) -> EvalResult:
    """{"dataset_name", "dataset_type", "mean_iou", ["dataset_split", "dataset_config"]} -> EvalResult."""
    unknown = set(entry) - EVAL_RESULT_KEYS
    missing = {"dataset_name", "dataset_type", "mean_iou"} - set(entry)
    if unknown or missing:
        raise ValueError(
            f"eval_results entries take {sorted(EVAL_RESULT_KEYS)}; got unknown {sorted(unknown)} / missing "
            f"{sorted(missing)} in {entry!r}."
        )
    return EvalResult(
        task_type="image-segmentation",
        task_name="Open-vocabulary semantic segmentation",
        dataset_type=entry["dataset_type"],
        dataset_name=entry["dataset_name"],
        dataset_split=entry.get("dataset_split"),
        dataset_config=entry.get("dataset_config"),
        metric_type="mean_iou",
        metric_name="mIoU",
        metric_value=float(entry["mean_iou"]),
    )


def _description(config: PATConfig, is_pat: bool, base_model: str | None) -> dict:
    """The template's architecture fields, read from the config."""
    id2label = config.id2label or {}
    names = [id2label[key] for key in sorted(id2label, key=int)]
    preview = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    pyramid_line = None
    if is_pat and hasattr(config, "codebook_sizes"):
        pyramid_line = (
            f"scales {list(config.pyramid_scales)}, codebooks {list(config.codebook_sizes)} "
            f"(+ latent {config.latent_codebook_size}), code dim {config.code_dim}"
        )
    clip_line = f"open_clip `{config.clip_model_name}`"
    if base_model:
        clip_line += f" (weights of [`{base_model}`](https://huggingface.co/{base_model}))"
    clip_line += f", frozen, input scaled by {config.clip_resolution}"
    vocabulary_line = f"{len(names)} classes from `config.id2label`" + (f" ({preview})" if names else "")
    return {
        "clip_line": clip_line,
        "side_layers": config.side_num_hidden_layers,
        "side_width": config.side_hidden_size,
        "side_patch_size": config.side_patch_size,
        "num_queries": config.num_queries,
        "pyramid_line": pyramid_line,
        "vocabulary_line": vocabulary_line,
        "num_templates": len(config.prompt_templates),
    }


def _training_section(training_summary, datasets, converted_from, source_checkpoint, source_sha256=None) -> str:
    parts = []
    if converted_from:
        parts.append(_conversion_note(converted_from, source_checkpoint, source_sha256))
    if training_summary:
        parts.append(training_summary.strip())
    if datasets:
        names = [datasets] if isinstance(datasets, str) else list(datasets)
        links = ", ".join(f"[`{name}`](https://huggingface.co/datasets/{name})" for name in names)
        parts.append(f"Training data: {links}.")
    return "\n\n".join(parts) if parts else "No training details were provided for this checkpoint."


def _conversion_note(converted_from: str, source_checkpoint: str | None, source_sha256: str | None = None) -> str:
    """The "converted, not trained here" paragraph; the official SAN repo also gets its training data and recipe."""
    is_hub_repo = _HUB_REPO_ID.match(converted_from) is not None
    where = f"[`{converted_from}`](https://huggingface.co/{converted_from})" if is_hub_repo else f"`{converted_from}`"
    if source_checkpoint:
        where += f" (`{source_checkpoint}`" + (f", sha256 `{source_sha256}`)" if source_sha256 else ")")
    if converted_from.lower() == OFFICIAL_SAN_REPO.lower():
        return (
            f"No training was done for this repository: the weights were converted from the official SAN checkpoint "
            f"{where} with the converter of `modeling_pat` (`modeling_pat/apps/conversion.py`). The SAN authors "
            "trained it on COCO-Stuff (171 classes); see the SAN paper and `configs/san_clip_vit_res4_coco.yaml` in "
            "[MendelXu/SAN](https://github.com/MendelXu/SAN) for the recipe."
        )
    return (
        f"The weights were converted from the SAN-format checkpoint {where} with "
        "the converter of `modeling_pat` (`modeling_pat/apps/conversion.py`)."
    )


def _evaluation_section(results: list[EvalResult]) -> str:
    if not results:
        return "No evaluation results are reported for this checkpoint."
    rows = ["| Dataset | Split | mIoU (%) |", "|---|---|---|"]
    for result in results:
        config = f" ({result.dataset_config})" if result.dataset_config else ""
        rows.append(f"| {result.dataset_name}{config} | {result.dataset_split or '-'} | {result.metric_value:.1f} |")
    return "\n".join(rows)


def _has_remote_code(model_dir: Path) -> bool:
    config_path = model_dir / "config.json"
    return config_path.is_file() and "auto_map" in json.loads(config_path.read_text(encoding="utf-8"))


def _count_parameters(model_dir: Path) -> str | None:
    """Total parameters of the `*.safetensors` weights in `model_dir`, e.g. "437.6M", from the file headers only."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        bad = bad_weights_error([path])  # safetensors would only say "Error while deserializing header"
        if bad is not None:
            raise bad
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():
                count = 1
                for dim in weights.get_slice(key).get_shape():
                    count *= dim
                total += count
    if total == 0:
        return None
    return f"{total / 1e6:.1f}M" if total >= 1e5 else f"{total / 1e3:.1f}K"


# -- command line ----------------------------------------------------------------------------------------------------
def read_eval_results(path) -> list[dict]:
    """An `--eval-results` JSON file -> `write_model_card` entries.

    Accepted: a list of entries (`dataset_name`, `dataset_type`, `mean_iou` in %, optional `dataset_split`,
    `dataset_config`), an object with such a list under `"eval_results"`, or an evaluation results table (an object
    with `"results"`: rows with `display_name` or `dataset`, `dataset_type`, `split` and `mean_iou` as a fraction).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"--eval-results {str(path)!r}: cannot read it as JSON: {error}") from error
    if isinstance(data, dict) and isinstance(data.get("eval_results"), list):
        data = data["eval_results"]
    elif isinstance(data, dict) and isinstance(data.get("results"), list):
        data = [_table_row_to_entry(row) for row in data["results"] if row.get("mean_iou") is not None]
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ValueError(
            f"--eval-results {str(path)!r} must hold a list of results (objects with dataset_name, dataset_type and "
            "mean_iou), an object with such a list under 'eval_results', or a results table under 'results'."
        )
    for entry in data:
        _eval_result(entry)  # fail here, naming the bad entry, rather than half-way through writing
    return data


def _table_row_to_entry(row: dict) -> dict:
    """An evaluation-table row (mIoU as a fraction) -> a model-card entry (mIoU in %)."""
    entry = {
        "dataset_name": row.get("display_name") or row.get("dataset"),
        "dataset_type": row.get("dataset_type") or row.get("dataset"),
        "mean_iou": round(100 * float(row["mean_iou"]), 2),
    }
    if row.get("split"):
        entry["dataset_split"] = row["split"]
    return entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_pat.model_card",
        description="Write README.md (a Hub model card) into a saved SAN/PAT model folder.",
    )
    parser.add_argument("model_dir", type=Path, help="a save_pretrained folder (with config.json)")
    parser.add_argument("--eval-results", type=Path, metavar="JSON", help="evaluation results (see read_eval_results)")
    parser.add_argument("--datasets", nargs="+", metavar="ID", help="Hub dataset id(s) the model was trained on")
    parser.add_argument("--base-model", help="Hub id of the CLIP weights (default: derived from the config)")
    parser.add_argument("--license", default="mit", help="Hub licence id (default: mit, SAN's licence)")
    parser.add_argument("--training-summary", metavar="MARKDOWN", help="text of the Training section")
    parser.add_argument("--tags", nargs="+", metavar="TAG", help="extra tags")
    parser.add_argument("--model-name", help="title and model-index name (default: the folder name)")
    parser.add_argument("--repo-id", help="Hub id used in the usage examples (default: the model name)")
    parser.add_argument("--converted-from", metavar="REPO", help="where the original checkpoint came from")
    parser.add_argument("--source-checkpoint", metavar="FILE", help="the checkpoint file in --converted-from")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m modeling_pat.model_card MODEL_DIR [...]`; returns 0, or 2 with a message on bad input."""
    args = build_parser().parse_args(argv)
    try:
        if not (args.model_dir / "config.json").is_file():
            raise ValueError(f"{str(args.model_dir)!r} is not a saved model folder (it has no config.json).")
        eval_results = read_eval_results(args.eval_results) if args.eval_results is not None else None
        path = write_model_card(
            args.model_dir,
            base_model=args.base_model,
            datasets=args.datasets,
            eval_results=eval_results,
            license=args.license,
            training_summary=args.training_summary,
            tags=args.tags,
            model_name=args.model_name,
            repo_id=args.repo_id,
            converted_from=args.converted_from,
            source_checkpoint=args.source_checkpoint,
        )
    except (OSError, ValueError) as error:
        print(f"model_card: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


__all__ = ["main", "read_eval_results", "write_model_card"]


if __name__ == "__main__":
    sys.exit(main())
