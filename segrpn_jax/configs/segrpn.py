"""Table I: SegRPN without scale division (every instance on every class-agnostic level).
Tokens: roi | rpn | roi+rpn (default roi+rpn), synthetic."""

from segrpn_jax.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.scale_case = "none"
  return default.apply_tokens(c, arg)
