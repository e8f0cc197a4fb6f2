"""Table II, case 2: scale-divided class-agnostic targets (DESIGN.md table, eq. (4)).
Tokens: roi | rpn | roi+rpn (default roi+rpn), synthetic."""

import pathlib
import sys

# The settings import configs/default.py: make that work from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.scale_case = "case2"
  return default.apply_tokens(c, arg)
