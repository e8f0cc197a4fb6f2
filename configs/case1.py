"""Table II, case 1: scale-divided class-agnostic targets (docs/architecture.md, eq. (3)).

The setting lives in the package (segrpn_jax/configs/case1.py); this thin file makes
`--config=configs/case1.py[:TOKENS]` work from a clone.
"""

from segrpn_jax.configs.case1 import get_config  # noqa: F401
