"""Tests for segrpn_jax.ops.nms against a plain NumPy greedy NMS with torchvision's arithmetic."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops.nms import batched_nms, nms

# The threshold is traced so that one compile serves every threshold. A traced threshold is
# compared in float32, so the tests hand in `as_float32(t)`: the float32 value below which
# comparisons agree with torchvision's double comparison (the rounding nms applies itself to a
# Python float; test_ties_and_double_precision_threshold checks that path).
_nms = jax.jit(nms, static_argnames=("max_output",))
_batched_nms = jax.jit(batched_nms, static_argnames=("max_output",))


def as_float32(iou_threshold):
  t32 = np.float32(iou_threshold)
  return np.nextafter(t32, np.float32(-np.inf)) if float(t32) > iou_threshold else t32


def small_nms(boxes, scores, iou_threshold, valid=None, classes=None):
  """Hand-computed cases padded to 8 boxes and 8 slots, so they share one compile."""
  n = len(scores)
  pad = lambda x, value: np.concatenate([np.asarray(x), np.full((8 - n, *np.shape(x)[1:]), value)])
  valid = np.ones(n, bool) if valid is None else valid
  args = (pad(boxes, 0.0).astype(np.float32), pad(scores, 0.0).astype(np.float32))
  kwargs = dict(valid=pad(valid, False), iou_threshold=as_float32(iou_threshold), max_output=8)
  if classes is None:
    idx, out_valid = _nms(*args, **kwargs)
  else:
    idx, out_valid = _batched_nms(*args, pad(classes, 0), **kwargs)
  idx, out_valid = np.asarray(idx), np.asarray(out_valid)
  assert (idx[~out_valid] == 0).all()
  return _kept(idx, out_valid)


def reference_nms(boxes, scores, iou_threshold, valid=None):
  """Greedy NMS exactly as torchvision's CPU kernel: float32 IoU compared in double."""
  boxes = boxes.astype(np.float32)
  usable = scores > -np.inf
  if valid is not None:
    usable &= valid
  order = [i for i in np.argsort(-scores, kind="stable") if usable[i]]
  x1, y1, x2, y2 = boxes.T
  areas = (x2 - x1) * (y2 - y1)
  suppressed = np.zeros(len(scores), bool)
  keep = []
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    w = np.maximum(np.float32(0), np.minimum(x2[i], x2) - np.maximum(x1[i], x1))
    h = np.maximum(np.float32(0), np.minimum(y2[i], y2) - np.maximum(y1[i], y1))
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
      overlap = inter / (areas[i] + areas - inter)
    suppressed |= overlap.astype(np.float64) > iou_threshold  # NaN (0/0) never suppresses
  return np.array(keep, dtype=np.int64)


def reference_batched_nms(boxes, scores, classes, iou_threshold, valid=None):
  keep = []
  for c in np.unique(classes):
    members = np.flatnonzero(classes == c)
    sub_valid = None if valid is None else valid[members]
    keep.extend(members[reference_nms(boxes[members], scores[members], iou_threshold, sub_valid)])
  keep = np.array(keep, dtype=np.int64)
  # torchvision sorts the merged result by score; ties in index order (a stable sort).
  order = np.lexsort((keep, -scores[keep]))
  return keep[order]


def hard_case(seed, n):
  """Boxes built to stress tie-breaking: clusters, exact and near duplicates, tied scores."""
  rng = np.random.default_rng(seed)
  n_free = n // 3
  xy = rng.uniform(0, 600, (n_free, 2))
  free = np.concatenate([xy, xy + rng.uniform(4, 150, (n_free, 2))], 1)
  n_clustered = n - n_free
  centres = rng.uniform(0, 600, (12, 2))
  sizes = rng.uniform(16, 200, (12, 2))
  pick = rng.integers(0, 12, n_clustered)
  cxy = centres[pick] + rng.normal(0, 0.08, (n_clustered, 2)) * sizes[pick]
  cwh = sizes[pick] * np.exp(rng.normal(0, 0.1, (n_clustered, 2)))
  clustered = np.concatenate([cxy, cxy + cwh], 1)
  boxes = np.concatenate([free, clustered]).astype(np.float32)
  # Exact duplicates, near duplicates (sub-pixel jitter) and a few zero-size boxes.
  dup = rng.choice(n, n // 8, replace=False)
  boxes[dup] = boxes[rng.integers(0, n, n // 8)]
  near = rng.choice(n, n // 8, replace=False)
  boxes[near] = boxes[rng.integers(0, n, n // 8)] + rng.uniform(-0.01, 0.01, (n // 8, 4))
  boxes[rng.choice(n, 5, replace=False), 2:] = boxes[rng.choice(n, 5, replace=False), :2]
  perm = rng.permutation(n)
  boxes = boxes[perm]
  # Coarse scores: many exact ties.
  scores = rng.integers(1, 40, n).astype(np.float32) / 40.0
  return boxes, scores


def _kept(indices, valid):
  indices, valid = np.asarray(indices), np.asarray(valid)
  assert not valid[np.argmin(valid) :].any() or valid.all(), "valid slots must come first"
  return indices[valid]


def test_hand_computed():
  boxes = [
    [0.0, 0.0, 10.0, 10.0],  # 0: score 0.9, kept
    [1.0, 0.0, 11.0, 10.0],  # 1: IoU 90/110 = 0.82 with box 0 -> suppressed
    [20.0, 20.0, 30.0, 30.0],  # 2: disjoint, kept
    [5.0, 0.0, 15.0, 10.0],  # 3: IoU 1/3 with box 0, 0.6 with box 1 (suppressed, no effect)
  ]
  scores = [0.9, 0.8, 0.7, 0.6]
  np.testing.assert_array_equal(small_nms(boxes, scores, 0.5), [0, 2, 3])
  # At 0.3 box 3 is suppressed by box 0 (1/3 > 0.3).
  np.testing.assert_array_equal(small_nms(boxes, scores, 0.3), [0, 2])
  # Box 1 out-scoring box 0 flips everything: 1 kept, 0 suppressed, 3 (IoU 0.6 with 1) gone.
  np.testing.assert_array_equal(small_nms(boxes, [0.8, 0.9, 0.7, 0.6], 0.3), [1, 2])


def test_chain_needs_exact_greedy():
  # Box i overlaps i+1 with IoU 28/36 > 0.7 but i+2 with 24/40 < 0.7: greedy keeps every other
  # box. Any "suppressed by a higher-scored box" shortcut (without checking that the higher box
  # was itself kept) keeps only box 0.
  x = np.arange(7, dtype=np.float32) * 4
  boxes = np.stack([x, 0 * x, x + 32, 0 * x + 32], 1)
  np.testing.assert_array_equal(small_nms(boxes, np.linspace(1, 0.1, 7), 0.7), [0, 2, 4, 6])


def test_ties_and_double_precision_threshold():
  # Equal scores: lower index first, like a stable descending sort.
  boxes = [[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]]
  np.testing.assert_array_equal(small_nms(boxes, [0.5] * 4, 0.5), [0, 3])
  # IoU = 3 / 10 is float32(0.3) = 0.30000001 > 0.3 as torchvision compares it (in double):
  # suppressed, although it is not > float32(0.3). A Python float threshold, eager call, more
  # slots than boxes kept (padded with index 0, valid False).
  pair = jnp.array([[0.0, 0.0, 6.5, 1.0], [3.5, 0.0, 10.0, 1.0], [20.0, 0.0, 26.5, 1.0]])
  idx, valid = nms(pair, jnp.array([1.0, 0.5, 0.2]), 0.3, 4)
  np.testing.assert_array_equal(idx, [0, 2, 0, 0])
  np.testing.assert_array_equal(valid, [True, True, False, False])


def test_invalid_never_kept():
  boxes = [[0.0, 0.0, 10.0, 10.0], [100.0, 0, 110, 10], [200.0, 0, 210, 10]] * 2
  scores = [0.9, -np.inf, np.nan, 0.1, 0.2, 0.3]
  valid = np.array([False, True, True, True, True, True])
  np.testing.assert_array_equal(small_nms(boxes, scores, 0.5, valid), [5, 4, 3])
  assert len(small_nms(boxes, scores, 0.5, np.zeros(6, bool))) == 0


@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7, 0.9])
def test_matches_greedy_reference_large(iou_threshold):
  boxes, scores = hard_case(seed=int(iou_threshold * 10), n=5000)
  idx, valid = _nms(boxes, scores, as_float32(iou_threshold), max_output=5000)
  np.testing.assert_array_equal(_kept(idx, valid), reference_nms(boxes, scores, iou_threshold))


@functools.cache
def _masked_case():
  boxes, scores = hard_case(seed=7, n=700)
  rng = np.random.default_rng(7)
  valid = rng.uniform(size=700) > 0.2
  scores[rng.choice(700, 20, replace=False)] = -np.inf
  return boxes, scores, valid


def test_truncation_and_mask():
  boxes, scores, valid = _masked_case()
  expected = reference_nms(boxes, scores, 0.5, valid)
  assert len(expected) > 64
  idx, out_valid = _nms(boxes, scores, as_float32(0.5), valid=valid, max_output=64)
  np.testing.assert_array_equal(_kept(idx, out_valid), expected[:64])
  assert np.asarray(out_valid).all()


@pytest.mark.parametrize("iou_threshold", [0.3, 0.7])
def test_batched_nms_matches_reference(iou_threshold):
  boxes, scores, valid = _masked_case()
  classes = np.random.default_rng(3).integers(0, 5, 700)
  expected = reference_batched_nms(boxes, scores, classes, iou_threshold, valid)
  idx, out_valid = _batched_nms(
    boxes, scores, classes, as_float32(iou_threshold), valid=valid, max_output=700
  )
  np.testing.assert_array_equal(_kept(idx, out_valid), expected)
  # Identical boxes of different classes never suppress each other.
  same = [[0.0, 0.0, 10.0, 10.0]] * 3
  kept = small_nms(same, [0.9, 0.8, 0.7], iou_threshold, classes=np.array([1, 2, 1]))
  np.testing.assert_array_equal(kept, [0, 1])


def test_jit_vmap_per_example():
  cases = [_masked_case()] + [(*hard_case(seed=s, n=700), None) for s in (11, 12)]
  boxes = np.stack([c[0] for c in cases])
  scores = np.stack([c[1] for c in cases])
  valid = np.stack([c[2] if c[2] is not None else np.ones(700, bool) for c in cases])
  fn = jax.jit(jax.vmap(lambda b, s, v: nms(b, s, 0.6, 1000, valid=v)))
  idx, out_valid = fn(boxes, scores, valid)
  assert idx.shape == (3, 1000)
  for i in range(3):
    # More slots than boxes kept: the tail is padding with index 0.
    expected = reference_nms(boxes[i], scores[i], 0.6, valid[i])
    np.testing.assert_array_equal(_kept(idx[i], out_valid[i]), expected)
    assert int(np.sum(out_valid[i])) == len(expected)
    assert (np.asarray(idx[i])[len(expected) :] == 0).all()


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
    nms(jnp.zeros((2, 5)), jnp.zeros(2), 0.5, 2)
  with pytest.raises(ValueError, match="scores must be"):
    nms(jnp.zeros((2, 4)), jnp.zeros(3), 0.5, 2)
  with pytest.raises(ValueError, match="max_output"):
    nms(jnp.zeros((2, 4)), jnp.zeros(2), 0.5, 0)
