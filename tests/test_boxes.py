"""Tests for segrpn_jax.ops.boxes: hand-computed cases and detectron2's rules."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops import boxes as box_ops


def test_area_hand_computed():
  b = jnp.array([[0.0, 0.0, 10.0, 5.0], [2.0, 3.0, 2.0, 9.0], [1.5, 1.0, 4.0, 2.0]])
  np.testing.assert_allclose(box_ops.area(b), [50.0, 0.0, 2.5])
  # Leading axes are kept.
  assert box_ops.area(b[None]).shape == (1, 3)


def test_iou_hand_computed():
  a = jnp.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
  b = jnp.array(
    [
      [0.0, 0.0, 10.0, 10.0],  # identical: 1
      [5.0, 0.0, 15.0, 10.0],  # half overlap: 50 / 150
      [10.0, 0.0, 20.0, 10.0],  # touching edge: 0
      [2.0, 2.0, 4.0, 4.0],  # inside: 4 / 100
      [0.0, 0.0, 0.0, 0.0],  # zero-size: 0, and 0 (not NaN) against the zero-size box
    ]
  )
  expected = np.array([[1.0, 50.0 / 150.0, 0.0, 0.04, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
  got = np.asarray(box_ops.iou(a, b))
  assert not np.isnan(got).any()
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_encode_hand_computed():
  src = jnp.array([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
  dst = jnp.array([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), size 20 x 20
  weights = (10.0, 10.0, 5.0, 5.0)
  expected = [10.0 * 7.0 / 10.0, 10.0 * 4.0 / 20.0, 5.0 * math.log(2.0), 5.0 * math.log(1.0)]
  np.testing.assert_allclose(box_ops.encode(src, dst, weights)[0], expected, rtol=1e-6)
  np.testing.assert_allclose(box_ops.decode(src, jnp.array([expected]), weights), dst, rtol=1e-6)


def test_encode_decode_round_trip():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 500, (64, 2))
  wh = rng.uniform(1, 300, (64, 2))
  src = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  xy2 = xy + rng.uniform(-50, 50, (64, 2))
  wh2 = wh * rng.uniform(0.25, 4, (64, 2))
  dst = np.concatenate([xy2, xy2 + wh2], axis=1).astype(np.float32)
  for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
    deltas = box_ops.encode(jnp.array(src), jnp.array(dst), weights)
    np.testing.assert_allclose(box_ops.decode(src, deltas, weights), dst, rtol=1e-4, atol=1e-3)


def test_decode_clamps_scale():
  src = jnp.array([[0.0, 0.0, 16.0, 16.0]])
  deltas = jnp.array([[0.0, 0.0, 100.0, 3.0]])  # dw far above log(1000/16) = 4.135, dh below
  out = np.asarray(box_ops.decode(src, deltas))[0]
  # Width is capped at 16 * 1000 / 16 = 1000 about the centre 8; height grows by exp(3).
  h = 16.0 * math.exp(3.0)
  np.testing.assert_allclose(out, [8.0 - 500.0, 8.0 - h / 2, 8.0 + 500.0, 8.0 + h / 2], rtol=1e-5)
  assert np.isfinite(out).all()
  # The clamp applies to the unweighted delta: with ww = 5 a delta of 5 * log(1000/16) is the cap.
  out_w = box_ops.decode(src, jnp.array([[0.0, 0.0, 1000.0, 0.0]]), (10.0, 10.0, 5.0, 5.0))
  np.testing.assert_allclose(out_w[0, 2] - out_w[0, 0], 1000.0, rtol=1e-5)
  # A custom clamp.
  out_c = box_ops.decode(src, deltas, scale_clamp=math.log(2.0))
  np.testing.assert_allclose(out_c[0, 2] - out_c[0, 0], 32.0, rtol=1e-6)


def test_clip():
  b = jnp.array([[-5.0, -1.0, 30.0, 12.0], [3.0, 4.0, 5.0, 6.0], [40.0, 50.0, 60.0, 70.0]])
  expected = [[0.0, 0.0, 20.0, 10.0], [3.0, 4.0, 5.0, 6.0], [20.0, 10.0, 20.0, 10.0]]
  np.testing.assert_array_equal(box_ops.clip(b, 10, 20), expected)
  # Traced image sizes work under jit.
  np.testing.assert_array_equal(jax.jit(box_ops.clip)(b, 10, 20), expected)


def _square(side):
  return [0.0, 0.0, side, side]


@pytest.mark.parametrize(
  ("side", "level"),
  [
    (0.0, 2),  # zero-size padding: the lowest level, not -inf
    (10.0, 2),
    (111.0, 2),
    (112.0, 3),  # 224 / 2 exactly: log2 = -1 -> level 3
    (223.0, 3),
    (224.0, 4),
    (447.0, 4),
    (448.0, 5),
    (5000.0, 5),  # clamped at max_level
  ],
)
def test_fpn_level_boundaries(side, level):
  got = box_ops.fpn_level(jnp.array([_square(side)]))
  assert got.dtype == jnp.int32
  assert int(got[0]) == level


def test_fpn_level_custom_canonical_and_rectangles():
  # case3 (docs/architecture.md): canonical 128. A 64 x 256 box has side 128 -> level 4.
  boxes = jnp.array([[0.0, 0.0, 64.0, 256.0], [0.0, 0.0, 63.0, 256.0], [0, 0, 1000.0, 1000.0]])
  np.testing.assert_array_equal(box_ops.fpn_level(boxes, canonical_size=128), [4, 3, 5])
  np.testing.assert_array_equal(
    box_ops.fpn_level(boxes, max_level=6, canonical_size=128), [4, 3, 6]
  )


def test_vmap_over_batch():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 50, (3, 5, 4)).astype(np.float32)
  a[..., 2:] += a[..., :2]
  b = rng.uniform(0, 50, (3, 7, 4)).astype(np.float32)
  b[..., 2:] += b[..., :2]
  batched = jax.jit(jax.vmap(box_ops.iou))(a, b)
  for i in range(3):
    np.testing.assert_allclose(batched[i], box_ops.iou(a[i], b[i]), rtol=1e-6)
  round_trip = jax.jit(jax.vmap(lambda s, d: box_ops.decode(s, box_ops.encode(s, d))))
  np.testing.assert_allclose(round_trip(a, b[:, :5]), b[:, :5], rtol=1e-4, atol=1e-3)
