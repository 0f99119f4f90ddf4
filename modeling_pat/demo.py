"""`pat-demo` / `python -m modeling_pat.demo`: a web page (Gradio) to try open-vocabulary segmentation.

    pat-demo                                  # the official SAN ViT-B/16, at http://127.0.0.1:7860
    pat-demo --model random:san-tiny          # offline, random weights (a smoke test: the maps are meaningless)
    pat-demo --model my-folder --device cuda --dtype bfloat16 --port 8080

Needs the `demo` extra (`pip install ".[demo]"`, Gradio). The page itself lives in `apps.demo_app`, the arguments are
parsed in `modeling_pat_cli` (before torch loads); this module only starts it, so that `python -m` runs a module that
the package import never loads.
"""

import sys

from modeling_pat_cli import demo_main as main


if __name__ == "__main__":
    sys.exit(main())
