"""The command-line front of `pat-segment` and `pat-demo`: arguments are parsed here, with the standard library only.

Why a module beside the package rather than in it: Python runs `modeling_pat/__init__.py` before any submodule, and
that `__init__` registers SAN / PAT with transformers' Auto classes, so that `import modeling_pat` is all a user needs
before `AutoModel.from_pretrained(...)` or `pipeline(...)`. Registering imports torch and transformers, which takes
seconds. The console scripts point here instead, so `--help` and usage errors answer at once; the package (and with it
torch) is imported only once the arguments are valid. `modeling_pat.apps.cli` and `modeling_pat.apps.demo_app` use the
parsers defined here, so `python -m modeling_pat.cli` and `from modeling_pat.cli import main` behave the same.
"""

import argparse
import importlib.util
import sys
from pathlib import Path


EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_MODEL, EXIT_UNREADABLE = 0, 1, 2, 3, 4

DEFAULT_MODEL = "san-vit-b16"  # the official SAN ViT-B/16, fetched and converted once (modeling_pat.apps.pretrained)
# The names the parsers offer, without importing the package. They mirror `modeling_pat.apps.pretrained.OFFICIAL_MODELS`
# and `modeling_pat.configuration_pat.VOCABULARY_FILES` (tests/test_cli_front.py keeps them equal).
OFFICIAL_MODEL_NAMES = ("san-vit-b16", "san-vit-l14-336")
VOCABULARY_NAMES = ("ade150", "ade847", "coco171", "pc459", "pc59", "voc20")
DTYPE_NAMES = ("bfloat16", "float16", "float32")  # torch dtypes by name (`modeling_pat.apps.cli.DTYPES`)
DEVICE_NAMES = ("auto", "cpu", "cuda")
SUBTASKS = ("semantic", "instance", "panoptic")
MAX_IMAGE_PIXELS = 25_000_000  # a 25-megapixel photo; larger demo uploads are refused before they are decoded
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"  # the repository's sample photos, in a clone


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# -- pat-segment ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The `pat-segment` arguments."""
    parser = argparse.ArgumentParser(
        prog="pat-segment",
        description="Segment images into the classes you name (SAN / PAT open-vocabulary segmentation).",
        epilog="Existing files are never overwritten unless they are earlier pat-segment results of the same kind and "
        "not inputs of this run; an image whose result names are taken gets the next free stem (<stem>-2, ...), "
        "reported at the end. Earlier results in an input folder or glob are not segmented again. "
        "Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 model not loadable, "
        "4 some images unreadable or their results not written.",
    )
    parser.add_argument(
        "inputs", nargs="+", help="image files, folders (their images, not recursive) or glob patterns (** recurses)"
    )
    vocabulary = parser.add_mutually_exclusive_group(required=True)
    vocabulary.add_argument(
        "--labels", action="append", metavar="NAMES", help="class names, comma-separated; may be repeated"
    )
    vocabulary.add_argument("--vocabulary", choices=VOCABULARY_NAMES, help="a benchmark's class names")
    parser.add_argument(
        "--model",
        default=None,
        help=f"official model name ({', '.join(OFFICIAL_MODEL_NAMES)}; fetched and converted once), official .pth "
        f"file, save_pretrained folder, Hub id (owner/name) or random:<preset> (e.g. random:san-tiny); "
        f"default: {DEFAULT_MODEL}",
    )
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model (default: main)")
    parser.add_argument(
        "--list-cache", action="store_true", help="list the converted official models in the local cache and exit"
    )
    parser.add_argument("--clear-cache", action="store_true", help="remove the converted official models and exit")
    parser.add_argument("--output-dir", default="outputs", type=Path, help="where results go (default: outputs/)")
    parser.add_argument("--batch-size", default=4, type=positive_int, help="images per forward pass (default: 4)")
    parser.add_argument("--device", default="auto", choices=DEVICE_NAMES, help="default: auto")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="default: float32")
    parser.add_argument(
        "--sliding-window",
        action="store_true",
        help="sliding-window inference: overlapping windows of the model's training size, scores averaged "
        "(for images much larger than that size)",
    )
    parser.add_argument(
        "--window-stride", type=positive_int, default=None, metavar="PIXELS",
        help="with --sliding-window: pixels between windows (default: two thirds of the window)",
    )
    parser.add_argument(
        "--subtask", default="semantic", choices=SUBTASKS,
        help="semantic (default): a class per pixel; instance / panoptic: also individual segments with scores "
        "(<stem>_segments.png, segments in the JSON; panoptic merges stuff classes such as sky into one segment)",
    )
    parser.add_argument(
        "--threshold", type=float, default=0.5,
        help="with --subtask instance / panoptic: the least segment score (instance) or class probability "
        "(panoptic) a segment needs (default: 0.5)",
    )
    parser.add_argument(
        "--mask-threshold", type=float, default=0.5, help="mask probability that makes a pixel part of a segment"
    )
    parser.add_argument(
        "--overlap-mask-area-threshold", type=float, default=0.8,
        help="a segment is dropped unless more than this share of its mask is left once better segments took "
        "their pixels (default: 0.8)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-image messages")
    return parser


def cache_request(argv: list[str] | None) -> str | None:
    """"clear" / "list" for `--clear-cache` / `--list-cache` (which need no inputs or labels), else None."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--list-cache", action="store_true")
    parser.add_argument("--clear-cache", action="store_true")
    known, _ = parser.parse_known_args(argv)
    if known.clear_cache:
        return "clear"
    return "list" if known.list_cache else None


def segment_main(argv: list[str] | None = None) -> int:
    """Console entry point (`pat-segment`); returns the exit code."""
    if (request := cache_request(argv)) is not None:
        from modeling_pat.apps.cli import cache_command

        return cache_command(request)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2), printed before torch loads
        return int(exit_request.code or 0)
    from modeling_pat.apps.cli import run_command

    return run_command(args)


# -- pat-demo ---------------------------------------------------------------------------------------------------------
def build_demo_parser() -> argparse.ArgumentParser:
    """The `pat-demo` arguments."""
    parser = argparse.ArgumentParser(
        prog="pat-demo", description="A web page to try SAN / PAT open-vocabulary segmentation (Gradio)."
    )
    parser.add_argument(
        "--model", default=None,
        help=f"model name, save_pretrained folder, Hub id (owner/name) or random:<preset> (e.g. random:san-tiny, "
        f"offline); default: {DEFAULT_MODEL}",
    )
    parser.add_argument("--device", default="auto", choices=DEVICE_NAMES, help="default: auto")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="default: float32")
    parser.add_argument("--port", type=int, default=7860, help="default: 7860")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--share", action="store_true", help="also publish a temporary public link (off by default)")
    parser.add_argument(
        "--max-pixels", type=int, default=MAX_IMAGE_PIXELS,
        help=f"largest image accepted, in pixels (default: {MAX_IMAGE_PIXELS})",
    )
    parser.add_argument(
        "--samples", type=Path, default=SAMPLES_DIR, help="folder of sample photos offered under the image input"
    )
    return parser


def demo_main(argv: list[str] | None = None) -> int:
    """Console entry point (`pat-demo`); returns the exit code."""
    try:
        args = build_demo_parser().parse_args(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    if importlib.util.find_spec("gradio") is None:  # found, not imported: Gradio loads once the model has
        print('pat-demo: error: the demo needs Gradio: pip install "modeling_pat[demo]"', file=sys.stderr)
        return EXIT_USAGE
    from modeling_pat.apps.demo_app import run_demo

    return run_demo(args)
