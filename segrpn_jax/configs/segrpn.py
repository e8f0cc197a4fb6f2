"""Table I: SegRPN without scale division (every instance on every class-agnostic level).
Tokens: roi | rpn | roi+rpn (default roi+rpn), no_rpn_mask, synthetic.

`no_rpn_mask` is the network of the paper's Fig. 5, SegRPN "when RPN_mask is not attached": the
class-agnostic module and its objectness prior to the semantic head, without RPN_mask
(config.model.rpn_mask = False), so with fusion 'none'; a fusion token beside it is an error.
"""

from segrpn_jax import errors
from segrpn_jax.configs import default
from segrpn_jax.models.rpn import FUSIONS

NO_RPN_MASK = "no_rpn_mask"


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.scale_case = "none"
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  if NO_RPN_MASK not in tokens:
    return default.apply_tokens(c, arg)
  tokens = [t for t in tokens if t != NO_RPN_MASK]
  fusions = [t for t in tokens if t in FUSIONS and t != "none"]
  if fusions:
    raise errors.ConfigError(
      f"config tokens {NO_RPN_MASK!r} and {fusions[0]!r}: the fusion needs RPN_mask, which "
      f"{NO_RPN_MASK} leaves out; drop one of the two tokens."
    )
  c.model.rpn_mask = False
  c.model.fusion.train = c.model.fusion.inference = "none"
  return default.apply_tokens(c, ",".join(tokens))
