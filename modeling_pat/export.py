"""`python -m modeling_pat.export`: ONNX export of the image path (the code is in `apps/onnx_export.py`)."""

import sys

from .apps.onnx_export import main


if __name__ == "__main__":
    sys.exit(main())
