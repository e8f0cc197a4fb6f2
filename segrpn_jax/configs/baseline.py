"""The paper's baseline: Panoptic-FPN style detection + semantic segmentation, no class-agnostic
module and no RPN_mask. Tokens: `synthetic`."""

from segrpn_jax.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.class_agnostic = False
  c.model.scale_case = "none"
  c.model.fusion.train = c.model.fusion.inference = "none"
  return default.apply_tokens(c, arg, fusion_allowed=False)
