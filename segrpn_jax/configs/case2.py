"""Table II, case 2: scale-divided class-agnostic targets (docs/architecture.md, eq. (4)).
Tokens: roi | rpn | roi+rpn (default roi+rpn), synthetic."""

from segrpn_jax.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.scale_case = "case2"
  return default.apply_tokens(c, arg)
