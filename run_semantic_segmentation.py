#!/usr/bin/env python
"""Train, fine-tune and evaluate SAN / PAT with `Trainer` on the benchmarks' own data layouts.

    # train SAN on COCO-Stuff-171 from CLIP weights (downloaded by open_clip), evaluate on the five benchmarks
    torchrun --nproc_per_node 8 run_semantic_segmentation.py --config_name san-clip-vit-b16 \
        --data_root $DETECTRON2_DATASETS --train_dataset coco171 --eval_datasets voc20 pc59 ade150 pc459 ade847 \
        --do_train --do_eval --max_steps 60000 --per_device_train_batch_size 4 --bf16 --output_dir san-coco

    # evaluate the official SAN ViT-B/16 (fetched and converted once) on the five benchmarks (Table I style)
    python run_semantic_segmentation.py --model_name_or_path san-vit-b16 --do_eval \
        --eval_datasets voc20 pc59 ade150 pc459 ade847 --data_root $DETECTRON2_DATASETS --output_dir eval-san

    # fine-tune on your own classes (folder with id2label.json, train/ and validation/ with image/ + label/)
    python run_semantic_segmentation.py --model_name_or_path san-vit-b16 --train_dataset folder=/data/mine \
        --eval_datasets folder=/data/mine --do_train --do_eval --max_steps 2000 --output_dir san-mine

Datasets are given as `KIND[=PATH][:SPLIT]` (see `modeling_pat/apps/data/__init__.py` for every layout): `coco171`,
`ade150`, `ade847`, `pc59`, `pc459`, `voc20` (folder under `--data_root`, or `=PATH`), `folder=PATH`, `hub=ID_OR_PATH`
(parquet / imagefolder repositories). A single `.json` / `.yaml` file with all arguments is also accepted.
Defaults follow SAN's recipe (AdamW 1e-4, weight decay 1e-4 with SAN's exceptions, poly 0.9 schedule, no warm-up,
full-model gradient clipping 0.01, 640 crops from short edges 320..960, SSD colour jitter, flip; test short edge 640).
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import SchedulerType
from transformers.training_args import ParallelMode

from modeling_pat import (
    PATConfig,
    PATForOpenVocabSegmentation,
    PATImageProcessor,
    PATProcessor,
    register_for_auto_classes,
)
from modeling_pat.apps.conversion import convert
from modeling_pat.apps.data import (
    SAN_TRAIN_SHORT_EDGES,
    DatasetSpec,
    EpochCallback,
    LabelFileError,
    SANTrainAugmentation,
    SegmentationCollator,
    SegmentationEvalDataset,
    SegmentationTrainDataset,
    default_data_root,
    load_split,
)
from modeling_pat.apps.evaluation import PATSegmentationTrainer, write_results_table
from modeling_pat.apps.finetuning import (
    LORA_TARGETS,
    add_lora,
    configure_clip_training,
    format_trainable_summary,
    merge_lora,
)
from modeling_pat.apps.optimization import POLY_LR_SCHEDULER_KWARGS
from modeling_pat.apps.pretrained import resolve_pretrained
from modeling_pat.apps.training import checkpoint_problem, last_complete_checkpoint
from modeling_pat.open_clip_backend import load_clip_weights, pretrained_clip_weights
from modeling_pat.weights_files import bad_weights_error


logger = logging.getLogger("run_semantic_segmentation")
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_CLIP_WEIGHTS = {"ViT-B-16": "openai", "ViT-L-14-336": "openai", "EVA02-B-16": "merged2b_s8b_b131k"}


class SetupError(RuntimeError):
    """A problem with the arguments, the data or the starting weights: reported without a traceback, exit code 2."""


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An official SAN model by name (san-vit-b16, san-vit-l14-336: fetched from the Hub and "
                          "converted once into a local cache), an official SAN checkpoint file (.pth, likewise; with "
                          "--config_name converted on the fly instead), a saved SAN/PAT folder (e.g. one this script "
                          "wrote) or a Hub repo of one."},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A preset name (san-clip-vit-b16, san-clip-vit-l14-336, pat-clip-vit-b16, san-tiny, "
                          "pat-tiny, ...) or a PATConfig JSON file: build a new model (random side network)."},
    )
    clip_pretrained: str = field(
        default="auto",
        metadata={"help": "CLIP weights for a model built from --config_name: an open_clip pretrained tag "
                          "(e.g. openai), a checkpoint file, 'auto' (the preset's CLIP: openai for ViT-B-16 / "
                          "ViT-L-14-336; none for custom tiny towers) or 'none' (random CLIP, smoke tests only)."},
    )
    image_processor_name: str | None = field(default=None, metadata={"help": "Folder of a saved image processor."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    token: str | None = field(default=None, metadata={"help": "Hub token (or `hf auth login`)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code stored in a Hub model repo."})
    clip_trainable_layers: int | None = field(
        default=None,
        metadata={"help": "Train the last N CLIP visual blocks too (default: the model's config; SAN: 0)."},
    )
    clip_lr_multiplier: float | None = field(
        default=None, metadata={"help": "Learning-rate factor of those CLIP blocks (default: the config's, 1.0)."}
    )
    lora_rank: int = field(default=0, metadata={"help": "LoRA rank (0: no LoRA); needs peft (extra [lora])."})
    lora_target: str = field(
        default="clip",
        metadata={"help": "Where LoRA goes: clip (the CLIP visual blocks' MLPs), side (the side adapter's layers) "
                          "or all.", "choices": list(LORA_TARGETS)},
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA adapters' input."})


@dataclass
class DataTrainingArguments:
    train_dataset: str | None = field(
        default=None,
        metadata={"help": "KIND[=PATH][:SPLIT] (default split train): coco171, ade150, ade847, pc59, pc459, voc20, "
                          "folder=PATH or hub=ID. The model learns its vocabulary (config.id2label)."},
    )
    eval_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "One or more KIND[=PATH][:SPLIT] (default split validation), each evaluated with its own "
                          "vocabulary and ignore value; e.g. voc20 pc59 ade150 pc459 ade847."},
    )
    predict_datasets: list[str] | None = field(
        default=None,
        metadata={"help": "Datasets whose predicted label maps --do_predict writes to <output_dir>/predictions/."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset (parquet / imagefolder) as in the official example: the same as "
                          "--train_dataset hub=NAME --eval_datasets hub=NAME."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    data_root: str | None = field(
        default=None,
        metadata={"help": "Folder holding the benchmarks in their own layouts (default $DETECTRON2_DATASETS or "
                          "./datasets): coco/, ADEChallengeData2016/, ADE20K_2021_17_01/, pcontext/, "
                          "pcontext_full/, VOC2012/."},
    )
    image_column_name: str | None = field(default=None, metadata={"help": "Image column of a Hub dataset."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column of a Hub dataset."})
    id2label_file: str | None = field(default=None, metadata={"help": "id2label.json for folder / Hub datasets."})
    ignore_index: int | None = field(default=None, metadata={"help": "Ignore value of folder / Hub labels (255)."})
    do_reduce_labels: bool = field(
        default=False, metadata={"help": "Folder / Hub labels use 0 = other: 0 -> ignore, v -> v - 1 (ADE20K)."}
    )
    train_val_split: float | None = field(
        default=0.15, metadata={"help": "Fraction held out as validation when a folder / Hub dataset has none."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N images per eval set."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Only the first N images to predict."})
    crop_size: int = field(default=640, metadata={"help": "Training crop (SAN: 640)."})
    train_short_edges: list[int] = field(
        default_factory=lambda: list(SAN_TRAIN_SHORT_EDGES),
        metadata={"help": "Short-edge sizes drawn for the training resize (SAN: 320 384 ... 960)."},
    )
    test_short_edge: int = field(default=640, metadata={"help": "Short edge of the test-time resize (SAN: 640)."})
    max_long_edge: int = field(default=2560, metadata={"help": "Long-edge cap of both resizes (SAN: 2560)."})
    color_jitter: bool = field(default=True, metadata={"help": "SSD photometric distortion in training."})
    flip_prob: float = field(default=0.5, metadata={"help": "Horizontal flip probability in training."})
    metric_path: str = field(
        default=str(REPO_ROOT / "metrics" / "mean_iou"),
        metadata={"help": "The mean-IoU evaluate module, loaded by path (no network)."},
    )


@dataclass
class SegmentationTrainingArguments(TrainingArguments):
    """TrainingArguments with SAN's recipe as the defaults."""

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (SAN / PAT: 1e-4)."})
    weight_decay: float = field(
        default=1e-4, metadata={"help": "Weight decay (SAN: 1e-4; 0 for norms, embeddings, codebooks, void)."}
    )
    lr_scheduler_type: SchedulerType | str = field(
        default="polynomial", metadata={"help": "SAN: polynomial (power 0.9, ends at 0, no warm-up)."}
    )
    max_grad_norm: float = field(default=0.01, metadata={"help": "Full-model gradient-norm clipping (SAN: 0.01)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Always False here: the collator already builds exactly the model inputs."}
    )


def parse_arguments(argv=None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, SegmentationTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # TrainingArguments refuses some combinations itself, with a ValueError
        if len(argv) == 1 and argv[0].endswith(".json"):
            return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
            return parser.parse_yaml_file(yaml_file=os.path.abspath(argv[0]))
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        raise SetupError(str(error)) from error


def check_arguments(data_args: DataTrainingArguments, args: TrainingArguments) -> None:
    """Values that make no sense are usage errors here, not a traceback from the Trainer or a scheduler later."""
    problems = []
    if args.do_train:
        if args.max_steps == 0 or args.max_steps < -1:
            problems.append(f"--max_steps {args.max_steps}: give a positive number of steps "
                            "(or -1 to train for --num_train_epochs).")
        elif args.max_steps == -1 and not args.num_train_epochs > 0:
            problems.append(f"--num_train_epochs {args.num_train_epochs} trains nothing; give a positive number.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} {getattr(args, name)}: must be at least 1.")
    for name in ("learning_rate", "weight_decay", "max_grad_norm"):
        if not getattr(args, name) >= 0:  # also catches nan
            problems.append(f"--{name} {getattr(args, name)}: must be a non-negative number.")
    if getattr(args.save_strategy, "value", args.save_strategy) == "steps" and not args.save_steps > 0:
        problems.append(f"--save_steps {args.save_steps}: must be positive (or --save_strategy no).")
    for name in ("crop_size", "test_short_edge", "max_long_edge"):
        if getattr(data_args, name) < 1:
            problems.append(f"--{name} {getattr(data_args, name)}: must be a positive number of pixels.")
    if not data_args.train_short_edges or min(data_args.train_short_edges) < 1:
        problems.append(f"--train_short_edges {data_args.train_short_edges}: give one or more positive sizes.")
    if not 0 <= data_args.flip_prob <= 1:
        problems.append(f"--flip_prob {data_args.flip_prob}: a probability, between 0 and 1.")
    if data_args.train_val_split is not None and not 0 <= data_args.train_val_split < 1:
        problems.append(f"--train_val_split {data_args.train_val_split}: a fraction, at least 0 and below 1.")
    for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
        if getattr(data_args, name) is not None and getattr(data_args, name) < 1:
            problems.append(f"--{name} {getattr(data_args, name)} leaves no examples; give at least 1.")
    if problems:
        raise SetupError(" ".join(problems))


def fix_training_arguments(args: TrainingArguments) -> None:
    """Settings this script needs whatever the user passed (each change is logged)."""
    if args.remove_unused_columns:
        logger.info("remove_unused_columns=False: the collator builds exactly the model inputs.")
        args.remove_unused_columns = False
    if args.batch_eval_metrics:
        logger.info("batch_eval_metrics=False: only per-image class areas are gathered, never whole maps.")
        args.batch_eval_metrics = False
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    if scheduler == "polynomial" and not args.lr_scheduler_kwargs:
        args.lr_scheduler_kwargs = dict(POLY_LR_SCHEDULER_KWARGS)
    if args.n_gpu > 1 and args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise SetupError(
            f"{args.n_gpu} GPUs in one process would use DataParallel, which splits the class embeddings along the "
            "batch axis. Launch with `torchrun --nproc_per_node N` or `accelerate launch`, or set CUDA_VISIBLE_DEVICES."
        )


# -- data --------------------------------------------------------------------------------------------------------------
def data_options(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int) -> dict:
    return {
        "id2label_file": data_args.id2label_file,
        "ignore_index": data_args.ignore_index,
        "reduce_labels": data_args.do_reduce_labels,
        "image_column": data_args.image_column_name,
        "label_column": data_args.label_column_name,
        "dataset_config_name": data_args.dataset_config_name,
        "train_val_split": data_args.train_val_split,
        "seed": seed,
        "cache_dir": model_args.cache_dir,
        "token": model_args.token,
    }


def load_named_splits(specs, default_split: str, data_args, options, limit) -> dict:
    """{label: SegmentationSplit} for a list of KIND[=PATH][:SPLIT] strings; labels are unique metric prefixes."""
    splits = {}
    for text in specs or []:
        spec = DatasetSpec.parse(text)
        try:
            split = load_split(spec, default_split, data_root=data_args.data_root or default_data_root(), **options)
        except (FileNotFoundError, ValueError) as error:
            raise SetupError(f"{text}: {error}") from error
        if limit is not None:
            split = split.select(range(min(limit, len(split))))
        label, number = spec.label(), 2
        while label in splits:
            label, number = f"{spec.label()}_{number}", number + 1
        splits[label] = split
    return splits


def check_train_batches(split, args: TrainingArguments) -> None:
    """With --dataloader_drop_last, a split smaller than one global batch gives no step at all."""
    batch = args.per_device_train_batch_size * max(args.world_size, 1)
    if args.dataloader_drop_last and len(split) < batch:
        raise SetupError(f"{split.display_name} ({split.split}) has {len(split)} examples, fewer than one batch of "
                         f"{batch} with --dataloader_drop_last: no training step would run.")


# -- model -------------------------------------------------------------------------------------------------------------
def resolve_config(name: str) -> PATConfig:
    """A preset name or a PATConfig JSON file; an unknown name or a setting out of range is a SetupError."""
    try:
        return PATConfig.from_json_file(name) if Path(name).is_file() else PATConfig.from_preset(name)
    except ValueError as error:  # PATConfig names the field and its allowed values
        raise SetupError(f"--config_name {name}: {error}") from error


def clip_weights_file(config: PATConfig, choice: str) -> str | None:
    """The CLIP checkpoint to load into a model built from a config: a file path, or None for random weights."""
    if choice.lower() == "none":
        return None
    if choice != "auto" and Path(choice).is_file():
        return choice
    name = config.clip_model_name
    tag = DEFAULT_CLIP_WEIGHTS.get(name) if choice == "auto" else choice
    if tag is None:
        logger.warning("CLIP %r has no pretrained weights in open_clip: the CLIP towers stay random.", name)
        return None
    try:
        return pretrained_clip_weights(name, tag, config.clip_config)
    except ValueError as error:
        raise SetupError(f"--clip_pretrained {tag}: {error}") from error
    except OSError as error:
        raise SetupError(
            f"Could not get the pretrained CLIP weights {tag!r} of open_clip {name!r}: {error}\n"
            "The Hugging Face Hub is not reachable from this machine (or the files are not cached). Either\n"
            "  * run once where the Hub is reachable (open_clip caches the file), or\n"
            "  * pass --clip_pretrained /path/to/open_clip_pytorch_model.bin (or .safetensors), or\n"
            "  * start from the official SAN weights: --model_name_or_path san-vit-b16 (fetched and converted "
            "once), or\n"
            "  * pass --clip_pretrained none for random CLIP weights (smoke tests only)."
        ) from error


def build_model(model_args: ModelArguments) -> PATForOpenVocabSegmentation:
    source = model_args.model_name_or_path
    if source and source.endswith((".pth", ".pt", ".pkl")) and model_args.config_name:
        try:  # an explicit config: no cache, no detection
            return convert(source, resolve_config(model_args.config_name))
        except (OSError, ValueError) as error:  # missing, truncated, corrupt or not SAN's: the message names the file
            raise SetupError(str(error)) from error
    if source:
        try:  # a short name (san-vit-b16) or a checkpoint file: fetched and converted once into the cache
            source = resolve_pretrained(source, revision=model_args.model_revision, token=model_args.token)
            return PATForOpenVocabSegmentation.from_pretrained(
                source, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                token=model_args.token, trust_remote_code=model_args.trust_remote_code,
            )
        except (OSError, ValueError) as error:  # ValueError: a setting out of range, or a ConversionError
            raise SetupError(f"Cannot load {model_args.model_name_or_path!r}: {error}") from error
    if not model_args.config_name:
        raise SetupError("Give a starting point: --model_name_or_path (saved / converted model) or --config_name.")
    config = resolve_config(model_args.config_name)
    weights = clip_weights_file(config, model_args.clip_pretrained)  # before the build: fail fast when offline
    model = PATForOpenVocabSegmentation(config)
    if weights is not None:
        try:
            load_clip_weights(model.model.clip_tower.clip, weights)
        except Exception as error:  # truncated, corrupt or not CLIP's weights: name the file and the problem
            bad = bad_weights_error([weights])  # safetensors itself only says "Error while deserializing header"
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise SetupError(str(bad) if bad else f"Cannot load the CLIP weights {weights}: "
                             f"{type(error).__name__}: {detail}") from error
        model.model.clip_tower.freeze(config.clip_trainable_positional_embedding, config.clip_trainable_layers)
        model.clear_inference_caches()  # the CLIP weights were replaced in place
        logger.info("Loaded CLIP weights from %s", weights)
    return model


def apply_finetuning_options(model: PATForOpenVocabSegmentation, model_args: ModelArguments) -> bool:
    """--clip_trainable_layers / --clip_lr_multiplier into the model's config and frozen set, and the LoRA adapter
    (--lora_rank, --lora_target); returns whether LoRA is on."""
    configure_clip_training(model, model_args.clip_trainable_layers, model_args.clip_lr_multiplier)
    if not model_args.lora_rank:
        return False
    try:
        add_lora(model, model_args.lora_rank, model_args.lora_target, model_args.lora_alpha, model_args.lora_dropout)
    except ImportError as error:
        raise SetupError(str(error)) from error
    return True


def set_vocabulary(model: PATForOpenVocabSegmentation, class_names: list[str], ignore_index: int) -> None:
    """The training vocabulary becomes the model's default vocabulary (config.id2label) and loss ignore value."""
    model.config.id2label = dict(enumerate(class_names))
    model.config.label2id = {name: i for i, name in enumerate(class_names)}
    model.config.ignore_index = int(ignore_index)  # the loss reads it from the config (labels_to_targets)


def build_image_processor(model_args, data_args, config: PATConfig) -> PATImageProcessor:
    # the model's own folder as from_pretrained saw it (a short name's converted folder, not the name)
    source = model_args.image_processor_name or (config.name_or_path if model_args.model_name_or_path else None)
    processor = None
    if source and not source.endswith((".pth", ".pt", ".pkl")):
        try:
            processor = PATImageProcessor.from_pretrained(source, cache_dir=model_args.cache_dir,
                                                          revision=model_args.model_revision, token=model_args.token)
        except OSError:
            processor = None
    if processor is None:
        processor = PATImageProcessor(size_divisibility=config.size_divisibility, ignore_index=config.ignore_index)
    processor.size = {"shortest_edge": data_args.test_short_edge, "longest_edge": data_args.max_long_edge}
    processor.ignore_index = config.ignore_index
    return processor


def resume_point(args: TrainingArguments) -> str | None:
    """--resume_from_checkpoint: `last` (or `true`) is the newest complete checkpoint in the output folder, passing
    over (with a warning) those a kill during saving left incomplete, and a fresh start when there is none; a folder
    given by name must be complete."""
    checkpoint = args.resume_from_checkpoint
    if checkpoint is None:
        return None
    if checkpoint.lower() in ("true", "last"):
        found = last_complete_checkpoint(args.output_dir)
        if found is None:
            logger.warning("--resume_from_checkpoint %s: no complete checkpoint in %s; training starts from step 0.",
                           checkpoint, args.output_dir)
        return found
    if not Path(checkpoint).is_dir():
        raise SetupError(f"--resume_from_checkpoint {checkpoint}: no such folder.")
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise SetupError(f"--resume_from_checkpoint {checkpoint}: incomplete checkpoint ({problem}).")
    return checkpoint


def save_model(trainer: PATSegmentationTrainer, image_processor: PATImageProcessor, use_lora: bool = False) -> None:
    """The model, and beside it the full processor (image processor, the model's CLIP tokenizer and prompt
    templates), so that the output folder loads with AutoProcessor, pipeline(...) and pat-segment like a converted
    checkpoint. A LoRA run first writes its adapter to OUTPUT/lora_adapter (it applies to this run's base weights)
    and merges it into the weights, so that OUTPUT holds a plain checkpoint that loads without peft."""
    if use_lora:
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(Path(trainer.args.output_dir) / "lora_adapter")
        merge_lora(trainer.model)
    trainer.save_model()
    if trainer.is_world_process_zero():
        config = trainer.model.config
        tokenizer = PATProcessor.from_config(config).tokenizer
        processor = PATProcessor(image_processor, tokenizer, prompt_templates=config.prompt_templates)
        processor.save_pretrained(trainer.args.output_dir)


# -- main ------------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    model_args, data_args, training_args = parse_arguments(argv)
    check_arguments(data_args, training_args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    fix_training_arguments(training_args)
    logger.warning(
        "Process rank %s of %s, device %s, n_gpu %s, bf16 %s, fp16 %s", training_args.process_index,
        training_args.world_size, training_args.device, training_args.n_gpu, training_args.bf16, training_args.fp16,
    )
    set_seed(training_args.seed)

    if data_args.dataset_name:
        data_args.train_dataset = data_args.train_dataset or f"hub={data_args.dataset_name}"
        data_args.eval_datasets = data_args.eval_datasets or [f"hub={data_args.dataset_name}"]
    options = data_options(data_args, model_args, training_args.seed)
    train_split, checkpoint = None, None
    if training_args.do_train:
        checkpoint = resume_point(training_args)
        if not data_args.train_dataset:
            raise SetupError("--do_train needs --train_dataset (or --dataset_name).")
        train_split = next(iter(load_named_splits(
            [data_args.train_dataset], "train", data_args, options, data_args.max_train_samples).values()))
        check_train_batches(train_split, training_args)
    eval_splits = {}
    if training_args.do_eval or (training_args.do_train and training_args.eval_strategy != "no"):
        if not data_args.eval_datasets:
            raise SetupError("--do_eval (or an eval_strategy) needs --eval_datasets.")
        eval_splits = load_named_splits(data_args.eval_datasets, "validation", data_args, options,
                                        data_args.max_eval_samples)
    predict_splits = {}
    if training_args.do_predict:
        if not data_args.predict_datasets:
            raise SetupError("--do_predict needs --predict_datasets.")
        predict_splits = load_named_splits(data_args.predict_datasets, "validation", data_args, options,
                                           data_args.max_predict_samples)

    register_for_auto_classes()  # checkpoints carry the code, so they load with trust_remote_code
    model = build_model(model_args)
    if train_split is not None:
        set_vocabulary(model, train_split.class_names, train_split.ignore_index)
    processor = build_image_processor(model_args, data_args, model.config)
    metric = evaluate.load(data_args.metric_path)
    use_lora = apply_finetuning_options(model, model_args)
    if use_lora and checkpoint is not None:  # a fresh start (`last` with no complete checkpoint) is fine
        raise SetupError("--resume_from_checkpoint is not available with --lora_rank: LoRA checkpoints hold the "
                         "adapter only, not the side network trained beside it.")

    train_dataset, callbacks = None, []
    if train_split is not None:
        augmentation = SANTrainAugmentation(
            crop_size=data_args.crop_size, short_edges=tuple(data_args.train_short_edges),
            max_long_edge=data_args.max_long_edge, photometric_distortion=data_args.color_jitter,
            flip_prob=data_args.flip_prob, ignore_index=train_split.ignore_index,
        )
        train_dataset = SegmentationTrainDataset(train_split, augmentation, processor, seed=training_args.seed)
        callbacks.append(EpochCallback(train_dataset))
        logger.info("Training on %s/%s: %d images, %d classes, ignore %d", train_split.name, train_split.split,
                    len(train_split), train_split.num_labels, train_split.ignore_index)
    eval_datasets = {label: SegmentationEvalDataset(split, processor) for label, split in eval_splits.items()}

    trainer = PATSegmentationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        data_collator=SegmentationCollator(ignore_index=model.config.ignore_index,
                                           size_divisibility=model.config.size_divisibility),
        # none: save_model writes the full processor. Trainer would copy its tokenizer's ids into the config, and a
        # preprocessor_config.json beside it makes pipeline(...) ask the remote-code question (transformers guesses
        # a video processor from its auto_map)
        processing_class=None,
        callbacks=callbacks,
        metric=metric,
        predictions_dir=Path(training_args.output_dir) / "predictions",
    )
    if train_split is not None:
        trainer.training_summary = (
            f"Trained with `run_semantic_segmentation.py` on {train_split.display_name} ({train_split.split}, "
            f"{len(train_split)} images, {train_split.num_labels} classes): SAN augmentation ({data_args.crop_size} "
            f"crops), AdamW lr {training_args.learning_rate}, weight decay {training_args.weight_decay}, "
            f"{training_args.lr_scheduler_type} schedule, gradient clipping {training_args.max_grad_norm}."
        )

    if training_args.do_train:
        if trainer.is_world_process_zero():
            print(format_trainable_summary(model), flush=True)  # what the optimiser's groups are built from
        result = trainer.train(resume_from_checkpoint=checkpoint)
        save_model(trainer, processor, use_lora)
        metrics = result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if not training_args.do_train:
            save_model(trainer, processor)  # the evaluated model: the card below describes the folder

    if training_args.do_predict:
        for label, split in predict_splits.items():
            output = trainer.predict(SegmentationEvalDataset(split, processor), metric_key_prefix=f"predict_{label}")
            trainer.log_metrics("predict", output.metrics)
            trainer.save_metrics(f"predict_{label}", output.metrics)

    if trainer.is_world_process_zero():
        eval_results = [trainer.segmentation_results[k] for k in trainer.segmentation_results if k.startswith("eval")]
        model_name = Path(model_args.model_name_or_path or model_args.config_name or "model").name
        if eval_results:
            markdown, _ = write_results_table(eval_results, training_args.output_dir, model_name)
            logger.info("Benchmark table (%s):\n%s", markdown, markdown.read_text())
        if (Path(training_args.output_dir) / "config.json").is_file():
            trainer.create_model_card(model_name=Path(training_args.output_dir).name)

    # every rank waits while rank 0 writes the results table and card; not during the upload below (which may take
    # longer than the process group's timeout): the ranks that return first just close their group
    trainer.accelerator.wait_for_everyone()
    if training_args.push_to_hub:
        trainer.push_to_hub()  # the card is the package's own (PATSegmentationTrainer.create_model_card)
    return 0


def close_process_group() -> None:
    """Destroy the distributed process group, if any, before the interpreter shuts down.

    A rank that exits with a live gloo group can abort at shutdown ("terminate called without an active exception",
    SIGABRT) while its worker threads still hold tensors, which fails the whole `accelerate launch`.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except Exception as error:  # at exit: never hide the run's own error or exit code behind this one
            logger.warning("Could not destroy the process group at exit: %s", error)


def data_error_line(error: LabelFileError) -> str:
    """One line for a bad label file met during a run. A DataLoader worker's error comes back with the worker's
    traceback in its message; the file and the problem are its last line."""
    last = str(error).strip().splitlines()[-1]
    prefix = f"{type(error).__module__}.{type(error).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except LabelFileError as error:  # a label file read after the start: the data, not the code, is at fault
        print(f"error: {data_error_line(error)}", file=sys.stderr)
        sys.exit(2)
    finally:
        close_process_group()
