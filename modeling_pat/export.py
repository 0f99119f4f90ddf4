"""`python -m modeling_pat.export`: ONNX export of the image path (the code is in `onnx_export.py`)."""

import sys

from .onnx_export import main


if __name__ == "__main__":
    sys.exit(main())
