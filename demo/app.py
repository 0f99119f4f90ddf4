"""The demo as a Hugging Face Space: push this folder (app.py, requirements.txt, README.md) as a Gradio Space.

The Space installs the package from its git repository (requirements.txt) and runs this file, which starts
`pat-demo` on the address and port the Space expects. Settings (the Space's variables):

    PAT_DEMO_MODEL   the model to serve (default: pat-demo's own, the official SAN ViT-B/16)
    PAT_DEMO_DTYPE   float32 (default), bfloat16 or float16

Sample photos put into a `samples/` folder beside this file are offered under the image input.
"""

import os
import sys
from pathlib import Path

from modeling_pat.demo import main


def space_arguments(environ) -> list[str]:
    """pat-demo's arguments for a Space: every address (the Space's proxy reaches the app from outside), its port."""
    arguments = [
        "--host", environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        "--port", environ.get("GRADIO_SERVER_PORT", "7860"),
        "--samples", str(Path(__file__).resolve().parent / "samples"),
    ]
    if environ.get("PAT_DEMO_MODEL"):
        arguments += ["--model", environ["PAT_DEMO_MODEL"]]
    if environ.get("PAT_DEMO_DTYPE"):
        arguments += ["--dtype", environ["PAT_DEMO_DTYPE"]]
    return arguments


if __name__ == "__main__":
    sys.exit(main(space_arguments(os.environ)))
