"""Tests for segrpn_jax.ops.anchors: detectron2's DefaultAnchorGenerator rules, written out."""

import math

import numpy as np
import pytest

from segrpn_jax.ops.anchors import cell_anchors, generate_anchors

R2 = math.sqrt(2.0)


def test_cell_anchors_by_hand():
  # size 16: ratio 0.5 (h/w) is 16*sqrt2 wide and 8*sqrt2 tall; ratio 2 the transpose.
  expected = [
    [-8 * R2, -4 * R2, 8 * R2, 4 * R2],
    [-8.0, -8.0, 8.0, 8.0],
    [-4 * R2, -8 * R2, 4 * R2, 8 * R2],
  ]
  got = cell_anchors(16, (0.5, 1.0, 2.0))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_small_image_written_out():
  # 8 x 12 image, strides (4, 8), sizes (8, 16): level 0 is 2 x 3 cells, level 1 is 1 x 2.
  level0, level1 = generate_anchors(8, 12, strides=(4, 8), sizes=(8, 16))
  assert level0.shape == (2 * 3 * 3, 4)
  assert level1.shape == (1 * 2 * 3, 4)
  # Level 1, (y, x, anchor) order: cell (0, 0) then cell (0, 1) centred at x = 8.
  expected1 = [
    [-8 * R2, -4 * R2, 8 * R2, 4 * R2],
    [-8.0, -8.0, 8.0, 8.0],
    [-4 * R2, -8 * R2, 4 * R2, 8 * R2],
    [8 - 8 * R2, -4 * R2, 8 + 8 * R2, 4 * R2],
    [0.0, -8.0, 16.0, 8.0],
    [8 - 4 * R2, -8 * R2, 8 + 4 * R2, 8 * R2],
  ]
  np.testing.assert_allclose(level1, expected1, rtol=1e-6, atol=1e-6)
  # Level 0: row (y * W + x) * A + a. Square anchors (a = 1) of size 8 at every cell.
  for y in range(2):
    for x in range(3):
      cx, cy = 4.0 * x, 4.0 * y
      np.testing.assert_allclose(level0[(y * 3 + x) * 3 + 1], [cx - 4, cy - 4, cx + 4, cy + 4])
  # Cell (y=1, x=2), ratio 2: 4*sqrt2 wide, 8*sqrt2 tall about (8, 4).
  np.testing.assert_allclose(
    level0[(1 * 3 + 2) * 3 + 2], [8 - 2 * R2, 4 - 4 * R2, 8 + 2 * R2, 4 + 4 * R2], rtol=1e-6
  )


def test_offset_shifts_centres():
  (plain,) = generate_anchors(8, 8, strides=(8,), sizes=(16,))
  (half,) = generate_anchors(8, 8, strides=(8,), sizes=(16,), offset=0.5)
  np.testing.assert_allclose(half - plain, 4.0, rtol=1e-6)


def test_default_levels_for_cityscapes_input():
  anchors = generate_anchors(512, 1024)
  cells = [(128, 256), (64, 128), (32, 64), (16, 32), (8, 16)]
  assert [a.shape for a in anchors] == [(h * w * 3, 4) for h, w in cells]
  for level, size in zip(anchors, (32, 64, 128, 256, 512), strict=True):
    assert level.dtype == np.float32
    w = level[:, 2] - level[:, 0]
    h = level[:, 3] - level[:, 1]
    np.testing.assert_allclose(w * h, size**2, rtol=1e-5)  # ratios keep the area
    np.testing.assert_allclose(h[:3] / w[:3], [0.5, 1.0, 2.0], rtol=1e-5)
  # Last anchor of P6: cell (7, 15) at (960, 448), ratio 2.
  w, h = math.sqrt(512**2 / 2), 2 * math.sqrt(512**2 / 2)
  np.testing.assert_allclose(anchors[-1][-1], [960 - w / 2, 448 - h / 2, 960 + w / 2, 448 + h / 2])


def test_non_divisible_size_rounds_up():
  # 'SAME' padding: a 100-pixel side at stride 32 has ceil(100 / 32) = 4 cells.
  (level,) = generate_anchors(100, 33, strides=(32,), sizes=(64,), aspect_ratios=(1.0,))
  assert level.shape == (4 * 2, 4)
  np.testing.assert_array_equal(level[:, 0] + 32, [0, 32] * 4)
  np.testing.assert_array_equal(level[:, 1] + 32, np.repeat([0, 32, 64, 96], 2))


def test_bad_arguments():
  with pytest.raises(ValueError, match="one anchor size per level"):
    generate_anchors(64, 64, strides=(4, 8), sizes=(32,))
  with pytest.raises(ValueError, match="offset"):
    generate_anchors(64, 64, offset=1.0)
