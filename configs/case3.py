"""Table II, case 3: scale-divided class-agnostic targets (docs/architecture.md, eq. (5)).

The setting lives in the package (segrpn_jax/configs/case3.py); this thin file makes
`--config=configs/case3.py[:TOKENS]` work from a clone.
"""

from segrpn_jax.configs.case3 import get_config  # noqa: F401
