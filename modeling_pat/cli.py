"""`python -m modeling_pat.cli`: the `pat-segment` command (the code is in `apps/cli.py`).

A thin entry module, so that `python -m modeling_pat.cli` and `from modeling_pat.cli import main` keep working while
the application code lives in `modeling_pat.apps`, apart from the model.
"""

import sys

from .apps.cli import main


__all__ = ["main"]


if __name__ == "__main__":
    sys.exit(main())
