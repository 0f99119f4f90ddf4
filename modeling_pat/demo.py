"""`pat-demo` / `python -m modeling_pat.demo`: a web page (Gradio) to try open-vocabulary segmentation.

    pat-demo                                  # the official SAN ViT-B/16, at http://127.0.0.1:7860
    pat-demo --model random:san-tiny          # offline, random weights (a smoke test: the maps are meaningless)
    pat-demo --model my-folder --device cuda --dtype bfloat16 --port 8080

Needs the `demo` extra (`pip install ".[demo]"`, Gradio). The page itself lives in `demo_app`; this module only
starts it, so that `python -m` runs a module that the package import never loads.
"""

import importlib.util
import sys


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`pat-demo`); returns the exit code."""
    if importlib.util.find_spec("gradio") is None:  # found, not imported: Gradio loads once the model has
        print('pat-demo: error: the demo needs Gradio: pip install "modeling_pat[demo]"', file=sys.stderr)
        return 2
    from .demo_app import main as run_demo

    return run_demo(argv)


if __name__ == "__main__":
    sys.exit(main())
