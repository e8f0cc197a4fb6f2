"""IoU matcher (detectron2 Matcher semantics) and the static balanced sampler."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops import matching


def _np_iou(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
  area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
  area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


_match = jax.jit(
  matching.match, static_argnames=("thresholds", "labels", "allow_low_quality_matches")
)


def test_match_hand_computed_boxes():
  gt = np.array(
    [
      [0, 0, 10, 10],  # g0
      [20, 20, 30, 30],  # g1
      [0, 0, 10, 5],  # g2: padding, identical to a1, must never be matched
      [100, 100, 110, 110],  # g3: valid but overlapping no anchor
    ],
    np.float32,
  )
  gt_valid = np.array([True, True, False, True])
  anchors = np.array(
    [
      [0, 0, 10, 10],  # a0: IoU(g0) = 100/100 = 1 -> positive
      [0, 0, 10, 5],  # a1: IoU(g0) = 50/100 = 0.5 -> ignored (g2 would give 1)
      [5, 0, 15, 10],  # a2: IoU(g0) = 50/150 = 1/3 -> ignored
      [0, 0, 10, 7],  # a3: IoU(g0) = 70/100 = 0.7, exactly the upper threshold -> positive
      [0, 0, 10, 3],  # a4: IoU(g0) = 30/100 = 0.3, exactly the lower threshold -> ignored
      [20, 20, 30, 25],  # a5: IoU(g1) = 50/100 = 0.5, g1's best (tie) -> positive
      [25, 20, 30, 30],  # a6: IoU(g1) = 50/100 = 0.5, g1's best (tie) -> positive
      [40, 40, 50, 50],  # a7: no overlap -> negative (g3's best is 0: no low-quality match)
      [0, 0, 30, 30],  # a8: IoU(g0) = IoU(g1) = 100/900 -> first (g0), negative
      [0, 0, 10, 2],  # a9: IoU(g0) = 20/100 = 0.2 -> negative
    ],
    np.float32,
  )
  iou = _np_iou(gt, anchors)
  np.testing.assert_allclose(
    iou[0], [1, 0.5, 1 / 3, 0.7, 0.3, 0, 0, 0, 1 / 9, 0.2], rtol=1e-6, atol=0
  )
  matched, labels = _match(iou, gt_valid)
  np.testing.assert_array_equal(labels, [1, -1, -1, 1, -1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(matched, [0, 0, 0, 0, 0, 1, 1, 0, 0, 0])
  # Without the low-quality rule g1's two anchors stay ignored.
  _, labels = _match(iou, gt_valid, allow_low_quality_matches=False)
  np.testing.assert_array_equal(labels, [1, -1, -1, 1, -1, -1, -1, 0, 0, 0])


def test_low_quality_match_keeps_own_best_gt_and_ties():
  iou = np.array(
    [
      [0.9, 0.6, 0.1, 0.0, 0.25],
      [0.0, 0.5, 0.5, 0.2, 0.0],
      [0.95, 0.95, 0.95, 0.95, 0.95],  # invalid: would win every argmax
    ],
    np.float32,
  )
  matched, labels = _match(iou, np.array([True, True, False]))
  # a1 is one of g1's best (0.5, tied with a2): positive, but it keeps its own best g0.
  np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(matched, [0, 0, 1, 1, 0])


def test_match_without_valid_gt_and_custom_labels():
  iou = np.array([[0.9, 0.2, 0.0], [0.1, 0.8, 0.5]], np.float32)
  matched, labels = _match(iou, np.array([False, False]))
  np.testing.assert_array_equal(labels, [0, 0, 0])
  np.testing.assert_array_equal(matched, [0, 0, 0])
  # ROI-head style: one threshold, below = background (0), at or above = foreground (1).
  matched, labels = _match(
    iou, np.array([True, True]), thresholds=(0.5,), labels=(0, 1), allow_low_quality_matches=False
  )
  np.testing.assert_array_equal(labels, [1, 1, 1])
  np.testing.assert_array_equal(matched, [0, 1, 1])
  # No ground truth at all (G = 0).
  matched, labels = matching.match(np.zeros((0, 4), np.float32), np.zeros((0,), bool))
  np.testing.assert_array_equal(labels, [0, 0, 0, 0])
  with pytest.raises(ValueError, match="len\\(labels\\)"):
    matching.match(iou, np.array([True, True]), thresholds=(0.3, 0.7), labels=(0, 1))


def _reference_match(iou, valid, lo=0.3, hi=0.7):
  """detectron2's Matcher on the valid rows (plus the best-IoU > 0 guard), in NumPy."""
  num_anchors = iou.shape[1]
  rows = np.flatnonzero(valid)
  if rows.size == 0:
    return np.zeros(num_anchors, int), np.zeros(num_anchors, int)
  sub = iou[rows]
  matched = rows[np.argmax(sub, axis=0)]
  best = sub.max(axis=0)
  labels = np.where(best < lo, 0, np.where(best < hi, -1, 1))
  best_per_gt = sub.max(axis=1)
  for g in range(sub.shape[0]):
    if best_per_gt[g] > 0:
      labels[sub[g] == best_per_gt[g]] = 1
  return matched, labels


def test_match_random_against_reference():
  rng = np.random.default_rng(0)
  # IoUs on a coarse grid so that ties (within and across gt) are common; vmapped over images.
  iou = (rng.integers(0, 11, size=(6, 6, 40)) / 10.0) * (rng.random((6, 6, 40)) < 0.5)
  iou = iou.astype(np.float32)
  valid = rng.random((6, 6)) < 0.7
  valid[0] = False  # one image without valid ground truth
  matched, labels = jax.jit(jax.vmap(matching.match))(iou, valid)
  for i in range(6):
    want_matched, want_labels = _reference_match(iou[i], valid[i])
    np.testing.assert_array_equal(labels[i], want_labels)
    np.testing.assert_array_equal(matched[i], want_matched)


NUM_SAMPLES, FRACTION = 16, 0.25
_sample = jax.jit(
  functools.partial(matching.sample_indices, num_samples=NUM_SAMPLES, positive_fraction=FRACTION)
)
_subsample = jax.jit(
  functools.partial(matching.subsample_labels, num_samples=NUM_SAMPLES, positive_fraction=FRACTION)
)
_sample_batch = jax.jit(
  jax.vmap(
    lambda labels, key, valid: matching.sample_indices(labels, NUM_SAMPLES, FRACTION, key, valid)
  )
)


def _random_labels(rng, num_pos, num_neg, num_ignore, num_invalid):
  labels = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignore + [0] * num_invalid)
  valid = np.array([True] * (num_pos + num_neg + num_ignore) + [False] * num_invalid)
  perm = rng.permutation(labels.size)
  return labels[perm].astype(np.int32), valid[perm]


@pytest.mark.parametrize(
  "num_pos,num_neg",
  [(10, 50), (2, 50), (10, 5), (1, 3), (0, 50)],  # 64 entries each with 4 ignored + invalid
)
def test_sampler_counts_and_exclusions(num_pos, num_neg):
  rng = np.random.default_rng(num_pos * 100 + num_neg)
  num_invalid = 60 - num_pos - num_neg
  labels, valid = _random_labels(rng, num_pos, num_neg, 4, num_invalid)
  want_pos = min(num_pos, int(NUM_SAMPLES * FRACTION))
  want_neg = min(num_neg, NUM_SAMPLES - want_pos)
  for seed in range(3):
    key = jax.random.key(seed)
    indices, positive, sampled = map(np.asarray, _sample(labels, key=key, valid_a=valid))
    pos_mask, neg_mask = map(np.asarray, _subsample(labels, key=key, valid_a=valid))
    assert positive[sampled].sum() == want_pos and (~positive[sampled]).sum() == want_neg
    assert sampled.sum() == want_pos + want_neg
    # Positives first, then negatives, then padding.
    np.testing.assert_array_equal(positive, np.arange(NUM_SAMPLES) < want_pos)
    np.testing.assert_array_equal(sampled, np.arange(NUM_SAMPLES) < want_pos + want_neg)
    picked = indices[sampled]
    assert len(set(picked.tolist())) == picked.size
    assert valid[picked].all()
    np.testing.assert_array_equal(labels[indices[positive]], 1)
    np.testing.assert_array_equal(labels[indices[sampled & ~positive]], 0)
    # The mask form is the same sample.
    assert set(np.flatnonzero(pos_mask)) == set(indices[positive].tolist())
    assert set(np.flatnonzero(neg_mask)) == set(indices[sampled & ~positive].tolist())


def test_sampler_keys_differ_and_are_uniform():
  rng = np.random.default_rng(1)
  labels, valid = _random_labels(rng, 10, 46, 4, 4)
  keys = jax.random.split(jax.random.key(0), 2000)
  batch = lambda x: np.broadcast_to(x, (keys.shape[0], *x.shape))
  indices, positive, sampled = map(np.asarray, _sample_batch(batch(labels), keys, batch(valid)))
  assert sampled.all() and (positive.sum(axis=1) == 4).all()
  # Different keys give different samples.
  assert len({tuple(sorted(row)) for row in indices.tolist()}) > 1990
  # and the 2000 draws of 4 out of 10 positives cover nearly all C(10, 4) = 210 subsets.
  assert len({tuple(sorted(row)) for row in indices[:, :4].tolist()}) > 200
  # Each of the 10 positives is drawn with probability 4/10; each negative with 12/46.
  counts = np.bincount(indices[positive], minlength=labels.size)
  np.testing.assert_allclose(counts[labels == 1] / keys.shape[0], 0.4, atol=0.06)
  counts = np.bincount(indices[sampled & ~positive], minlength=labels.size)
  np.testing.assert_allclose(counts[(labels == 0) & valid] / keys.shape[0], 12 / 46, atol=0.06)
  assert counts[~valid].sum() == 0


def test_sampler_pads_when_fewer_entries_than_samples():
  labels = jnp.array([1, 0, -1, 0], jnp.int32)
  indices, positive, sampled = matching.sample_indices(labels, 8, 0.5, jax.random.key(3))
  assert indices.shape == (8,) and np.asarray(sampled).sum() == 3
  assert np.asarray(positive).sum() == 1 and int(indices[0]) == 0
  assert set(np.asarray(indices)[1:3].tolist()) == {1, 3}
  assert ((np.asarray(indices) >= 0) & (np.asarray(indices) < 4)).all()
