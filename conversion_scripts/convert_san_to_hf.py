"""Convert an official SAN checkpoint (MendelXu/SAN key layout) into a `save_pretrained` folder.

    python conversion_scripts/convert_san_to_hf.py --checkpoint_path san_vit_b_16.pth \
        --config san-clip-vit-b16 --output_dir san-vit-b16-hf --verify

`--checkpoint_path` takes `.pth` (loaded with `torch.load(weights_only=True)`) or `.safetensors`, holding a raw state
dict or `{"model": ...}` / `{"state_dict": ...}`. Without it, the file is downloaded from the Hub repo `Mendel192/san`.
The conversion itself lives in `modeling_pat.apps.conversion`; `pat-segment --model san-vit-b16` (or
`modeling_pat.resolve_pretrained`) runs it once by itself and caches the result, so this script is only needed for a
folder of your own.
`--config` takes a preset name from `configuration/`, a PATConfig JSON file, or a golden parity folder's
`config.json` (the reference's own description of a configuration).
"""

import argparse
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere in a checkout
    sys.path.insert(0, str(REPO_ROOT))

from modeling_pat import PATForOpenVocabSegmentation, write_model_card  # noqa: E402
from modeling_pat.apps.conversion import (  # noqa: E402, F401  (this script's functions, kept importable from here)
    DROPPED_KEYS,
    KEY_MAPPING,
    REVERSE_KEY_MAPPING,
    config_from_reference_json,
    convert,
    convert_state_dict,
    load_converted_weights,
    read_checkpoint,
    reload_difference,
    rename_key,
    resolve_config,
    save,
    to_reference_state_dict,
)
from modeling_pat.apps.pretrained import OFFICIAL_MODELS, WeightsUnavailableError, fetch_checkpoint  # noqa: E402


HUB_REPO_ID = "Mendel192/san"
# preset -> file name in HUB_REPO_ID, from the official-model table
HUB_FILES = {entry.preset: entry.filename for entry in OFFICIAL_MODELS.values() if entry.repo_id == HUB_REPO_ID}


def download_checkpoint(preset: str) -> str:
    """Fetch the official SAN checkpoint from the Hub (or its local cache), with a clear message when impossible."""
    names = [name for name, entry in OFFICIAL_MODELS.items() if entry.preset == preset]
    if not names:
        raise SystemExit(
            f"No --checkpoint_path given and no official checkpoint is known for config {preset!r}; "
            f"the Hub repo {HUB_REPO_ID} has {sorted(HUB_FILES.values())} for configs {sorted(HUB_FILES)}."
        )
    try:
        return str(fetch_checkpoint(names[0]))
    except WeightsUnavailableError as error:
        raise SystemExit(f"{error}\nWith a downloaded copy, pass it to this script with --checkpoint_path.") from None


def verify(model: PATForOpenVocabSegmentation, output_dir: str | Path) -> None:
    """Reload the saved folder through the Auto classes and check it gives the same outputs on a sample input."""
    diff = reload_difference(model, output_dir)
    if diff > 1e-5:
        raise SystemExit(f"Verification failed: the reloaded model differs by {diff:.3g}.")
    print(f"Verified: reloaded model matches the converted one (max abs diff {diff:.3g}). Looks ok!")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", help="SAN checkpoint (.pth or .safetensors); default: download from the Hub")
    parser.add_argument("--config", required=True, help="preset name, PATConfig JSON, or golden config.json")
    parser.add_argument("--output_dir", required=True, help="where to write the save_pretrained folder")
    parser.add_argument("--verify", action="store_true", help="reload the output and compare outputs")
    args = parser.parse_args(argv)

    config = resolve_config(args.config)
    checkpoint_path = args.checkpoint_path or download_checkpoint(args.config)
    model = convert(checkpoint_path, config)
    save(model, args.output_dir)
    write_model_card(args.output_dir, converted_from=HUB_REPO_ID, source_checkpoint=Path(checkpoint_path).name)
    print(f"Saved the converted model and its model card to {args.output_dir}")
    if args.verify:
        verify(model, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
