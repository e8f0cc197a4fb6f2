"""Scale assignment (eqs. (3)-(5)) and the per-level class-agnostic targets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops import scale


def _square_boxes(sides):
  sides = np.asarray(sides, np.float32)
  return np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)


def _levels(member_nx5):
  """Row-wise list of the level numbers a box belongs to."""
  return [tuple(int(j) + 2 for j in np.flatnonzero(row)) for row in np.asarray(member_nx5)]


# Square boxes, so sqrt(area) is the side exactly; each side sits on or next to a threshold.
SIDES = [0, 31, 32, 47, 48, 63, 64, 95, 96, 111, 112, 127, 128, 191, 192, 223, 224, 255, 256]
SIDES += [383, 384, 447, 448, 1000]


def _expected(side, ranges):
  return tuple(
    level for level, (low, high) in zip(range(2, 7), ranges, strict=True) if low <= side < high
  )


@pytest.mark.parametrize(
  "case,ranges",
  [
    ("case1", [(0, 32), (32, 64), (64, 128), (128, 256), (256, np.inf)]),
    ("case2", [(0, 112), (112, 224), (224, 448), (448, np.inf), (448, np.inf)]),
    ("case3", [(0, 48), (48, 96), (96, 192), (192, 384), (384, np.inf)]),
  ],
)
def test_membership_at_threshold_boundaries(case, ranges):
  got = _levels(scale.level_membership(_square_boxes(SIDES), case))
  assert got == [_expected(s, ranges) for s in SIDES]


def test_membership_hand_cases():
  # case1 (eq. 3): 31 -> L2, 32 -> L3, 255 -> L5, 256 -> L6; a 16x64 box has side 32 -> L3.
  boxes = np.concatenate([_square_boxes([31, 32, 255, 256]), [[10, 10, 26, 74]]]).astype(np.float32)
  assert _levels(scale.level_membership(boxes, "case1")) == [(2,), (3,), (5,), (6,), (3,)]
  # case2 (eq. 4): the largest objects are on both L5 and L6; 447 stays on L4.
  assert _levels(scale.level_membership(_square_boxes([447, 448]), "case2")) == [(4,), (5, 6)]
  # case3 (eq. 5): 47 -> L2, 48 -> L3, 383 -> L5, 384 -> L6.
  got = _levels(scale.level_membership(_square_boxes([47, 48, 383, 384]), "case3"))
  assert got == [(2,), (3,), (5,), (6,)]


def test_membership_size_scale_moves_thresholds():
  # At half resolution every threshold halves: case1 boundaries at 16, 32, 64, 128.
  sides = [15, 16, 31, 32, 63, 64, 127, 128]
  got = _levels(scale.level_membership(_square_boxes(sides), "case1", size_scale=0.5))
  assert got == [(2,), (3,), (3,), (4,), (4,), (5,), (5,), (6,)]
  # case2 at x2: 896 is on L5 and L6, 895 on L4.
  got = _levels(scale.level_membership(_square_boxes([895, 896]), "case2", size_scale=2.0))
  assert got == [(4,), (5, 6)]


def test_membership_none_and_invalid():
  boxes = _square_boxes([5, 100, 600])
  valid = np.array([True, False, True])
  got = np.asarray(scale.level_membership(boxes, "none", valid=valid))
  np.testing.assert_array_equal(got, np.array([[1] * 5, [0] * 5, [1] * 5], bool))
  got = np.asarray(scale.level_membership(boxes, "case1", valid=valid))
  assert _levels(got) == [(2,), (), (6,)]


def test_membership_rejects_bad_arguments():
  with pytest.raises(ValueError, match="case4"):
    scale.level_membership(_square_boxes([1]), "case4")
  with pytest.raises(ValueError, match="size_scale"):
    scale.level_membership(_square_boxes([1]), "case1", size_scale=0.0)


def test_membership_jit_vmap():
  fn = jax.jit(jax.vmap(functools.partial(scale.level_membership, case="case3")))
  boxes = np.stack([_square_boxes([47, 48]), _square_boxes([383, 384])])
  got = np.asarray(fn(boxes))
  assert _levels(got[0]) == [(2,), (3,)] and _levels(got[1]) == [(5,), (6,)]


# A hand-drawn 8x8 scene: 1 = a 2x2 instance on L2 only, 2 = a 2x3 instance on L3 and L4,
# 3 = an invalid (padding) instance that must never appear, c = crowd.
_MAP = np.array(
  [
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 2, 2, 2],
    [0, 0, 0, 0, 0, 2, 2, 2],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [3, 3, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
  ],
  np.int32,
)
_CROWD = np.zeros((8, 8), bool)
_CROWD[1, 2] = _CROWD[3, 4] = _CROWD[6, 7] = _CROWD[7, 6] = _CROWD[7, 7] = True
_MEMBERSHIP = np.array([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
_VALID = np.array([True, True, False])
_BOXES = np.array([[0, 0, 2, 2], [5, 2, 8, 4], [0, 5, 2, 6]], np.float32)


def test_targets_hand_drawn_scene():
  targets, weights = scale.class_agnostic_targets(
    _MAP, _BOXES, _MEMBERSHIP, _VALID, _CROWD, strides=(2, 4, 8, 16, 32)
  )
  # L2, stride 2 (4x4 cells): instance 1 fills cell (0, 0); instance 2 is not on L2, so the
  # cell (1, 2) with a crowd pixel beside it is ignored; crowd also in cells (0, 1), (3, 3).
  expected_t2 = np.zeros((4, 4))
  expected_t2[0, 0] = 1
  np.testing.assert_array_equal(targets[0], expected_t2)
  expected_w2 = np.ones((4, 4))
  expected_w2[0, 1] = expected_w2[1, 2] = expected_w2[3, 3] = 0
  np.testing.assert_array_equal(weights[0], expected_w2)
  # L3, stride 4 (2x2): instance 2 in cell (0, 1), which stays weight 1 despite its crowd
  # pixel (3, 4); crowd-only cells (0, 0) and (1, 1) are ignored.
  np.testing.assert_array_equal(targets[1], [[0, 1], [0, 0]])
  np.testing.assert_array_equal(weights[1], [[0, 1], [1, 0]])
  # L4, stride 8: one cell, foreground (instance 2).
  np.testing.assert_array_equal(targets[2], [[1]])
  np.testing.assert_array_equal(weights[2], [[1]])
  # L5, L6: no valid member; the single cell holds crowd, so it is ignored.
  for level in (3, 4):
    np.testing.assert_array_equal(targets[level], [[0]])
    np.testing.assert_array_equal(weights[level], [[0]])
  assert all(
    t.dtype == jnp.float32 and w.dtype == jnp.float32 for t, w in zip(targets, weights, strict=True)
  )


def _reference_targets(instance_map, membership, valid, crowd, strides):
  """Cell-by-cell loop of the documented rule: any member pixel -> 1; crowd -> ignore."""
  height, width = instance_map.shape
  targets, weights = [], []
  for level, stride in enumerate(strides):
    rows, cols = -(-height // stride), -(-width // stride)
    t, w = np.zeros((rows, cols), np.float32), np.ones((rows, cols), np.float32)
    for i in range(rows):
      for j in range(cols):
        ids = instance_map[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
        fg = any(k > 0 and valid[k - 1] and membership[k - 1, level] for k in ids.ravel())
        window_crowd = crowd[i * stride : (i + 1) * stride, j * stride : (j + 1) * stride]
        t[i, j] = fg
        w[i, j] = 0.0 if (window_crowd.any() and not fg) else 1.0
    targets.append(t)
    weights.append(w)
  return targets, weights


@pytest.mark.parametrize("strides", [(4, 8, 16, 32, 64), (2, 3, 6, 12, 24)])
def test_targets_match_reference_on_random_maps(strides):
  rng = np.random.default_rng(0)
  height, width, num = 70, 130, 6  # not multiples of any stride: padding is exercised
  instance_map = np.zeros((height, width), np.int32)
  for k in range(1, num + 1):
    y, x = rng.integers(0, height - 5), rng.integers(0, width - 5)
    h, w = rng.integers(1, 40), rng.integers(1, 60)
    instance_map[y : y + h, x : x + w] = k
  crowd = np.zeros((height, width), bool)
  crowd[rng.integers(0, height) :, : rng.integers(0, width)] = True
  crowd &= instance_map == 0
  membership = rng.random((num, 5)) < 0.4
  valid = np.array([True] * (num - 1) + [False])
  boxes = np.zeros((num, 4), np.float32)
  got_t, got_w = scale.class_agnostic_targets(
    instance_map, boxes, membership, valid, crowd, strides=strides
  )
  want_t, want_w = _reference_targets(instance_map, membership, valid, crowd, strides)
  for level in range(5):
    np.testing.assert_array_equal(got_t[level], want_t[level])
    np.testing.assert_array_equal(got_w[level], want_w[level])


def test_targets_jit_vmap_and_errors():
  fn = jax.jit(jax.vmap(functools.partial(scale.class_agnostic_targets, strides=(2, 4, 8, 16, 32))))
  maps = np.stack([_MAP, np.zeros_like(_MAP)])
  crowds = np.stack([_CROWD, np.zeros_like(_CROWD)])
  targets, weights = fn(
    maps, np.stack([_BOXES] * 2), np.stack([_MEMBERSHIP] * 2), np.stack([_VALID] * 2), crowds
  )
  single_t, single_w = scale.class_agnostic_targets(
    _MAP, _BOXES, _MEMBERSHIP, _VALID, _CROWD, strides=(2, 4, 8, 16, 32)
  )
  for level in range(5):
    np.testing.assert_array_equal(targets[level][0], single_t[level])
    np.testing.assert_array_equal(weights[level][0], single_w[level])
    assert not np.asarray(targets[level][1]).any() and np.asarray(weights[level][1]).all()
  with pytest.raises(ValueError, match="crowd_hxw"):
    scale.class_agnostic_targets(_MAP, _BOXES, _MEMBERSHIP, _VALID, _CROWD[:4])
  with pytest.raises(ValueError, match="membership_nx5"):
    scale.class_agnostic_targets(_MAP, _BOXES, _MEMBERSHIP[:, :4], _VALID, _CROWD)
