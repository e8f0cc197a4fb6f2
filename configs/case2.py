"""Table II, case 2: scale-divided class-agnostic targets (docs/architecture.md, eq. (4)).

The setting lives in the package (segrpn_jax/configs/case2.py); this thin file makes
`--config=configs/case2.py[:TOKENS]` work from a clone.
"""

from segrpn_jax.configs.case2 import get_config  # noqa: F401
