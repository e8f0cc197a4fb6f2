"""segrpn_jax.benchmark.random_batch honours the batch contract of docs/architecture.md."""

import numpy as np

from segrpn_jax import benchmark
from segrpn_jax.configs import default


def test_random_batch_has_the_contract_shapes_dtypes_and_consistent_instances():
  config = default.get_config()
  config.data.image_size = (64, 96)
  config.data.max_instances = 10
  batch = benchmark.random_batch(config, batch_size=2, seed=3)
  height, width, n = 64, 96, 10
  expected = {
    "image": (np.float32, (2, height, width, 3)),
    "semantic": (np.int32, (2, height, width)),
    "instance_map": (np.int32, (2, height, width)),
    "crowd": (np.bool_, (2, height, width)),
    "boxes": (np.float32, (2, n, 4)),
    "classes": (np.int32, (2, n)),
    "valid": (np.bool_, (2, n)),
    "example_mask": (np.bool_, (2,)),
  }
  assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
  for b in range(2):
    valid = batch["valid"][b]
    assert valid.sum() == n // 2 and not valid[n // 2 :].any()  # real instances first
    classes = batch["classes"][b]
    assert ((classes[valid] >= 1) & (classes[valid] <= config.model.num_classes)).all()
    assert (classes[~valid] == 0).all()
    assert ((batch["semantic"][b] >= 0) & (batch["semantic"][b] < 19)).all()
    for k in np.unique(batch["instance_map"][b]):
      if k == 0:
        continue
      # Every pixel of instance k lies inside box k - 1 (its rectangle, rounded outwards).
      ys, xs = np.nonzero(batch["instance_map"][b] == k)
      x1, y1, x2, y2 = batch["boxes"][b, k - 1]
      assert valid[k - 1]
      assert xs.min() >= np.floor(x1) and xs.max() < np.ceil(x2)
      assert ys.min() >= np.floor(y1) and ys.max() < np.ceil(y2)
      assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
