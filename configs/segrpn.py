"""Table I: SegRPN without scale division (every instance on every class-agnostic level).

The setting lives in the package (segrpn_jax/configs/segrpn.py); this thin file makes
`--config=configs/segrpn.py[:TOKENS]` work from a clone.
"""

from segrpn_jax.configs.segrpn import get_config  # noqa: F401
