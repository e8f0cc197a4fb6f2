"""Tests for segrpn_jax.ops.roi_align against a loop-based NumPy port of torchvision's algorithm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops.boxes import fpn_level
from segrpn_jax.ops.roi_align import multilevel_roi_align, roi_align

S = 7  # one output size for every test: one compile per function

_roi_align = jax.jit(roi_align, static_argnames=("output_size", "sampling_ratio", "aligned"))
_multilevel = jax.jit(
  multilevel_roi_align, static_argnames=("output_size", "min_level", "sampling_ratio", "aligned")
)


def _bilinear(feature_hxwxc, y, x):
  """torchvision's bilinear_interpolate, written out for one sample."""
  h, w = feature_hxwxc.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(feature_hxwxc.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_high = y_low = h - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_high = x_low = w - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  hy, hx = 1.0 - ly, 1.0 - lx
  return (
    hy * hx * feature_hxwxc[y_low, x_low]
    + hy * lx * feature_hxwxc[y_low, x_high]
    + ly * hx * feature_hxwxc[y_high, x_low]
    + ly * lx * feature_hxwxc[y_high, x_high]
  )


def reference_roi_align(feature_hxwxc, boxes, output_size, spatial_scale, sampling_ratio, aligned):
  """torchvision.ops.roi_align for one image, NHWC, in float64 loops."""
  feature_hxwxc = np.asarray(feature_hxwxc, np.float64)
  out = np.zeros((len(boxes), output_size, output_size, feature_hxwxc.shape[-1]))
  offset = 0.5 if aligned else 0.0
  for r, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
    start_w, start_h = x1 * spatial_scale - offset, y1 * spatial_scale - offset
    roi_w = x2 * spatial_scale - offset - start_w
    roi_h = y2 * spatial_scale - offset - start_h
    if not aligned:
      roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    for ph in range(output_size):
      for pw in range(output_size):
        total = 0.0
        for iy in range(sampling_ratio):
          y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
          for ix in range(sampling_ratio):
            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
            total = total + _bilinear(feature_hxwxc, y, x)
        out[r, ph, pw] = total / (sampling_ratio * sampling_ratio)
  return out


def random_boxes(rng, n, height, width, margin):
  """Boxes of many sizes, some partly or wholly outside [0, width] x [0, height]."""
  xy = rng.uniform(-margin, [width + margin, height + margin], (n, 2))
  wh = np.exp(rng.uniform(np.log(0.3), np.log(max(height, width)), (n, 2)))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_hand_computed_linear_ramp():
  # f(y, x) = 10 y + x is reproduced exactly by bilinear sampling inside the map, so every bin
  # is f at the bin centre. Box [2, 2, 9, 9] at scale 1, aligned: roi starts at 1.5, bins of 1
  # px; bin (p, q) centre is (2 + p, 2 + q) and f there is 10 (2 + p) + 2 + q.
  ys, xs = np.mgrid[0:12, 0:12]
  feature = (10.0 * ys + xs).astype(np.float32)[..., None]
  out = _roi_align(
    feature, np.array([[2.0, 2.0, 9.0, 9.0]], np.float32), output_size=S, spatial_scale=1.0
  )
  p, q = np.mgrid[0:S, 0:S]
  np.testing.assert_allclose(out[0, ..., 0], 10.0 * (2 + p) + 2 + q, rtol=1e-6)
  # Unaligned: same box, roi starts at 2, centres at 2.5 + p.
  out = _roi_align(
    feature,
    np.array([[2.0, 2.0, 9.0, 9.0]], np.float32),
    output_size=S,
    spatial_scale=1.0,
    aligned=False,
  )
  np.testing.assert_allclose(out[0, ..., 0], 10.0 * (2.5 + p) + 2.5 + q, rtol=1e-6)


def test_hand_computed_outside_rules():
  # On a constant map each sample counts 1 if -1 <= y <= H and -1 <= x <= W, else 0, so a bin
  # is the fraction of its 2 x 2 samples inside. Box [-2, 0, 5, 7] at scale 1, aligned: roi
  # starts at (-2.5, -0.5), bins of 1 px, samples at start + bin + {0.25, 0.75}.
  # Columns: bin 0 at x = -2.25, -1.75 (both out), bin 1 at -1.25 (out), -0.75 (in), bins 2-5
  # in, bin 6 at 3.75 (in), 4.25 (> W = 4, out). Rows: bins 0-3 in, bin 4 at 3.75 (in), 4.25
  # (out), bins 5-6 out.
  feature = np.ones((4, 4, 1), np.float32)
  box = np.array([[-2.0, 0.0, 5.0, 7.0]], np.float32)
  out = np.asarray(_roi_align(feature, box, output_size=S, spatial_scale=1.0))[0, ..., 0]
  row_fraction = np.array([1, 1, 1, 1, 0.5, 0, 0])
  col_fraction = np.array([0, 0.5, 1, 1, 1, 1, 0.5])
  np.testing.assert_allclose(out, np.outer(row_fraction, col_fraction), atol=1e-7)


def test_matches_reference_single_level():
  rng = np.random.default_rng(0)
  feature = rng.normal(size=(9, 11, 3)).astype(np.float32)
  boxes = random_boxes(rng, 24, 9 * 4, 11 * 4, margin=12)
  boxes[0] = [-30.0, -30.0, -10.0, -10.0]  # wholly outside: zeros
  boxes[1] = [0.0, 0.0, 0.0, 0.0]  # zero size
  boxes[2] = [0.0, 0.0, 44.0, 36.0]  # the whole map
  for scale in (0.25, 0.5):
    for aligned in (True, False):
      got = _roi_align(feature, boxes, output_size=S, spatial_scale=scale, aligned=aligned)
      expected = reference_roi_align(feature, boxes, S, scale, 2, aligned)
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got)[0], 0.0)


def test_sampling_ratio_and_output_size():
  rng = np.random.default_rng(1)
  feature = rng.normal(size=(6, 5, 2)).astype(np.float32)
  boxes = random_boxes(rng, 5, 12, 10, margin=3)
  got = _roi_align(feature, boxes, output_size=3, spatial_scale=0.5, sampling_ratio=3)
  np.testing.assert_allclose(got, reference_roi_align(feature, boxes, 3, 0.5, 3, True), atol=1e-5)


# A 64 x 96 "image": levels 2..5 have maps 16x24, 8x12, 4x6, 2x3.
_LEVEL_SHAPES = [(16, 24), (8, 12), (4, 6), (2, 3)]


def _pyramid(rng, channels=4):
  return [rng.normal(size=(h, w, channels)).astype(np.float32) for h, w in _LEVEL_SHAPES]


def test_multilevel_uses_each_box_own_level():
  rng = np.random.default_rng(2)
  features = _pyramid(rng)
  boxes = random_boxes(rng, 40, 64, 96, margin=10)
  levels = np.asarray(fpn_level(boxes, canonical_size=24))  # spreads small boxes over 2..5
  assert set(levels.tolist()) == {2, 3, 4, 5}
  got = np.asarray(_multilevel(features, boxes, levels, output_size=S))
  for r in range(len(boxes)):
    k = int(levels[r])
    expected = reference_roi_align(features[k - 2], boxes[r : r + 1], S, 2.0**-k, 2, True)
    np.testing.assert_allclose(got[r : r + 1], expected, rtol=1e-5, atol=1e-5)
  # Levels outside 2..5 are clamped to the nearest given level.
  clamped = np.where(np.arange(40) % 2 == 0, 1, 9).astype(np.int32)
  got = np.asarray(_multilevel(features, boxes, clamped, output_size=S))
  np.testing.assert_allclose(
    got[0], reference_roi_align(features[0], boxes[:1], S, 0.25, 2, True)[0], rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    got[1],
    reference_roi_align(features[3], boxes[1:2], S, 1 / 32, 2, True)[0],
    rtol=1e-5,
    atol=1e-5,
  )


def test_jit_vmap_per_example():
  rng = np.random.default_rng(3)
  features = [np.stack([f, f[::-1] * 2.0]) for f in _pyramid(rng)]  # batch of 2 images
  boxes = np.stack([random_boxes(rng, 40, 64, 96, margin=10) for _ in range(2)])
  levels = np.asarray(jax.vmap(lambda b: fpn_level(b, canonical_size=24))(boxes))
  batched = jax.jit(jax.vmap(lambda f, b, k: multilevel_roi_align(f, b, k, S)))(
    features, boxes, levels
  )
  for i in range(2):
    single = _multilevel([f[i] for f in features], boxes[i], levels[i], output_size=S)
    np.testing.assert_allclose(batched[i], single, rtol=1e-6, atol=1e-6)
  single_level = jax.jit(jax.vmap(lambda f, b: roi_align(f, b, S, 0.25)))(features[0], boxes)
  for i in range(2):
    expected = reference_roi_align(features[0][i], boxes[i], S, 0.25, 2, True)
    np.testing.assert_allclose(single_level[i], expected, rtol=1e-5, atol=1e-5)


def test_gradient_is_the_adjoint():
  # RoIAlign is linear in the features, so <d/dF sum(g * roi_align(F)), F2> = <g, roi_align(F2)>.
  rng = np.random.default_rng(4)
  features, other = _pyramid(rng), _pyramid(rng)
  boxes = random_boxes(rng, 40, 64, 96, margin=10)
  levels = np.asarray(fpn_level(boxes, canonical_size=24))
  cotangent = rng.normal(size=(40, S, S, 4)).astype(np.float32)
  grads = jax.grad(lambda f: jnp.sum(cotangent * _multilevel(f, boxes, levels, output_size=S)))(
    features
  )
  lhs = sum(float(np.sum(g * o)) for g, o in zip(grads, other, strict=True))
  rhs = float(np.sum(cotangent * np.asarray(_multilevel(other, boxes, levels, output_size=S))))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_no_boxes_gives_empty_output():
  # R = 0 is a valid static shape: [0, S, S, C], not a reshape error.
  assert roi_align(jnp.ones((4, 4, 2)), jnp.zeros((0, 4)), 3, 1.0).shape == (0, 3, 3, 2)


def test_bad_arguments():
  with pytest.raises(ValueError, match="sampling_ratio"):
    roi_align(jnp.zeros((4, 4, 1)), jnp.zeros((1, 4)), 2, 1.0, sampling_ratio=0)
  with pytest.raises(ValueError, match=r"features must be \[H, W, C\]"):
    roi_align(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4)), 2, 1.0)
  with pytest.raises(ValueError, match="differ in channels"):
    multilevel_roi_align(
      [jnp.zeros((4, 4, 1)), jnp.zeros((2, 2, 2))], jnp.zeros((1, 4)), jnp.zeros(1, jnp.int32), 2
    )
