"""`python -m modeling_pat.model_card MODEL_DIR [...]`: write a Hub model card (the code is in `apps/model_card.py`).

A thin entry module: the package imports `apps.model_card` when `write_model_card` is first asked for, never this
module, so `python -m` runs a module that is not already loaded.
"""

import sys

from .apps.model_card import main, read_eval_results, write_model_card


__all__ = ["main", "read_eval_results", "write_model_card"]


if __name__ == "__main__":
    sys.exit(main())
