"""The paper's baseline: Panoptic-FPN style detection + semantic segmentation, no class-agnostic

The setting lives in the package (segrpn_jax/configs/baseline.py); this thin file makes
`--config=configs/baseline.py[:TOKENS]` work from a clone.
"""

from segrpn_jax.configs.baseline import get_config  # noqa: F401
