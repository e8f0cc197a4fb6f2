"""TFDS builders of SegRPN; importing this package registers them with tfds.

- `cityscapes_instances`: the Cityscapes release (manual download) with instance boxes.
- `synthetic_streets`: procedural street scenes, the embedded default (no download); its
  `cityscapes_like` config draws scenes with Cityscapes' instance counts, sizes and clutter.

Both share one feature spec (`features.make_features`). `python -m
segrpn_jax.datasets.statistics` measures a split beside Cityscapes (docs/synthetic.md).
`fake_cityscapes` writes a drawn release in Cityscapes' own file layout, for the builder's tests
and the input benchmark (`scripts/bench_input.py --cityscapes_release N`).
"""

from segrpn_jax.datasets import cityscapes_instances, synthetic_streets
from segrpn_jax.datasets.cityscapes_instances import CityscapesInstances
from segrpn_jax.datasets.synthetic_streets import SyntheticStreets, SyntheticStreetsConfig

__all__ = [
  "CityscapesInstances",
  "SyntheticStreets",
  "SyntheticStreetsConfig",
  "cityscapes_instances",
  "synthetic_streets",
]
