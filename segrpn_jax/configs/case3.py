"""Table II, case 3: scale-divided class-agnostic targets (docs/architecture.md, eq. (5)).
Tokens: roi | rpn | roi+rpn (default roi+rpn), synthetic."""

from segrpn_jax.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.scale_case = "case3"
  c.model.roi.canonical_size = 128  # eq. (5) pairs its levels with a 128 canonical ROI size
  return default.apply_tokens(c, arg)
