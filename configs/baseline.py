"""The paper's baseline: Panoptic-FPN style detection + semantic segmentation, no class-agnostic
module and no RPN_mask. Tokens: `synthetic`."""

import pathlib
import sys

# The settings import configs/default.py: make that work from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.class_agnostic = False
  c.model.scale_case = "none"
  c.model.fusion.train = c.model.fusion.inference = "none"
  return default.apply_tokens(c, arg, fusion_allowed=False)
