"""generate_proposals against a plain NumPy find_top_rpn_proposals (detectron2 semantics), and
the level and anchor it reports for every kept proposal."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.models import rpn
from segrpn_jax.ops import proposals


def _np_iou_one(box, boxes):
  lt = np.maximum(box[:2], boxes[:, :2])
  rb = np.minimum(box[2:], boxes[:, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  union = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def _np_greedy_nms(boxes, scores, threshold):
  order = np.argsort(-scores, kind="stable")
  keep, suppressed = [], np.zeros(len(order), bool)
  for rank, i in enumerate(order):
    if suppressed[rank]:
      continue
    keep.append(i)
    rest = order[rank + 1 :]
    suppressed[rank + 1 :] |= _np_iou_one(boxes[i], boxes[rest]) > threshold
  return np.asarray(keep, int)


_CLAMP = math.log(1000.0 / 16)


def _np_decode(anchors, deltas, weights, clamp=_CLAMP):
  w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
  cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
  dx, dy = deltas[:, 0] / weights[0], deltas[:, 1] / weights[1]
  dw = np.minimum(deltas[:, 2] / weights[2], clamp)
  dh = np.minimum(deltas[:, 3] / weights[3], clamp)
  pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, np.exp(dw) * w, np.exp(dh) * h
  return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=1)


def _reference(logits, deltas, anchors, image_size, pre, post, thresh, min_size, weights):
  """detectron2's find_top_rpn_proposals for one image, in NumPy float64."""
  height, width = image_size
  all_boxes, all_scores, all_levels = [], [], []
  for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors, strict=True)):
    top = np.argsort(-lg, kind="stable")[: min(pre, len(lg))]
    all_boxes.append(_np_decode(an[top].astype(np.float64), dl[top].astype(np.float64), weights))
    all_scores.append(lg[top])
    all_levels.append(np.full(len(top), level))
  boxes, scores, levels = map(np.concatenate, (all_boxes, all_scores, all_levels))
  finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
  boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
  nonempty = (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
  boxes, scores, levels = boxes[nonempty], scores[nonempty], levels[nonempty]
  keep = []  # batched NMS with the level as the class
  for level in np.unique(levels):
    idx = np.flatnonzero(levels == level)
    keep.extend(idx[_np_greedy_nms(boxes[idx], scores[idx], thresh)])
  keep = np.asarray(keep, int)
  keep = keep[np.argsort(-scores[keep], kind="stable")][:post]
  return boxes[keep], scores[keep]


LEVEL_SIZES = (600, 150, 40)  # the last level has fewer anchors than pre_nms_topk
IMAGE_SIZE = (60, 90)


def _random_inputs(rng, sizes=LEVEL_SIZES, image_size=IMAGE_SIZE):
  height, width = image_size
  logits, deltas, anchors = [], [], []
  for level, n in enumerate(sizes):
    side = 8.0 * 2**level * rng.uniform(0.5, 2.0, n)
    aspect = rng.choice([0.5, 1.0, 2.0], n)
    w, h = side / np.sqrt(aspect), side * np.sqrt(aspect)
    cx, cy = rng.uniform(-10, width + 10, n), rng.uniform(-10, height + 10, n)
    anchors.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32))
    deltas.append(rng.normal(0, 0.3, (n, 4)).astype(np.float32))
    logits.append(rng.normal(0, 2, n).astype(np.float32))
  return logits, deltas, anchors


PRE, POST, THRESH = 64, 100, 0.7
# One compiled function for every single-image case: min_size and box_weights are traced.
_generate = jax.jit(
  lambda logits, deltas, anchors, min_size, weights: proposals.generate_proposals(
    logits, deltas, anchors, IMAGE_SIZE, PRE, POST, THRESH, min_size=min_size, box_weights=weights
  )
)
UNIT = (1.0, 1.0, 1.0, 1.0)


def _compare(got, want):
  boxes, logits, valid = map(np.asarray, got[:3])
  want_boxes, want_logits = want
  n = len(want_logits)
  assert valid.sum() == n and valid[:n].all()
  np.testing.assert_array_equal(logits[:n], want_logits.astype(np.float32))
  np.testing.assert_allclose(boxes[:n], want_boxes, rtol=1e-5, atol=1e-3)
  assert (boxes[n:] == 0).all() and np.isneginf(logits[n:]).all()


@pytest.mark.parametrize("seed,min_size", [(0, 0.0), (1, 0.0), (2, 4.0)])
def test_matches_numpy_reference(seed, min_size):
  rng = np.random.default_rng(seed)
  logits, deltas, anchors = _random_inputs(rng)
  got = _generate(logits, deltas, anchors, min_size, UNIT)
  want = _reference(logits, deltas, anchors, IMAGE_SIZE, PRE, POST, THRESH, min_size, UNIT)
  assert len(want[1]) == POST  # more than POST survive NMS: the global cut is exercised
  _compare(got, want)


def test_roi_weights_and_nonfinite_inputs():
  rng = np.random.default_rng(3)
  logits, deltas, anchors = _random_inputs(rng)
  logits[0][:5] = [np.nan, np.inf, -np.inf, 50.0, 49.0]
  deltas[0][3] = [np.nan, 0, 0, 0]  # a top-scoring anchor whose box is not finite
  weights = (10.0, 10.0, 5.0, 5.0)
  got = _generate(logits, deltas, anchors, 1.0, weights)
  want = _reference(logits, deltas, anchors, IMAGE_SIZE, PRE, POST, THRESH, 1.0, weights)
  assert float(got[1][0]) == 49.0  # NaN, inf and the non-finite box are never proposals
  _compare(got, want)


def test_pads_when_fewer_proposals_than_post():
  rng = np.random.default_rng(4)
  logits, deltas, anchors = _random_inputs(rng)
  for level in range(3):  # only 12 candidates per level can be selected
    logits[level][12:] = -np.inf
  got = _generate(logits, deltas, anchors, 0.0, UNIT)
  want = _reference(logits, deltas, anchors, IMAGE_SIZE, PRE, POST, THRESH, 0.0, UNIT)
  assert 0 < len(want[1]) <= 36
  _compare(got, want)


def test_select_topk_per_level_pads_short_levels():
  indices, logits, valid = proposals.select_topk_per_level(
    [jnp.array([0.1, 3.0, -1.0, 2.0, 0.5]), jnp.array([1.0, 4.0])], 3
  )
  np.testing.assert_array_equal(indices[0], [1, 3, 4])
  np.testing.assert_array_equal(indices[1][:2], [1, 0])
  np.testing.assert_array_equal(valid, [[True, True, True], [True, True, False]])
  np.testing.assert_array_equal(logits, [[3.0, 2.0, 0.5], [4.0, 1.0, -np.inf]])


def test_vmap_over_images_with_their_own_sizes():
  rng = np.random.default_rng(5)
  inputs = [_random_inputs(rng) for _ in range(2)]
  sizes = [(60, 90), (40, 50)]
  stacked = [
    [np.stack([inp[part][level] for inp in inputs]) for level in range(3)] for part in range(3)
  ]
  heights = jnp.array([s[0] for s in sizes], jnp.float32)
  widths = jnp.array([s[1] for s in sizes], jnp.float32)
  batched = jax.jit(
    jax.vmap(
      lambda lg, dl, an, h, w: proposals.generate_proposals(lg, dl, an, (h, w), PRE, POST, THRESH)
    )
  )
  boxes, logits, valid, _, _ = batched(*stacked, heights, widths)
  for i in range(2):
    want = _reference(*inputs[i], sizes[i], PRE, POST, THRESH, 0.0, (1,) * 4)
    _compare((boxes[i], logits[i], valid[i]), want)


def test_no_gradient_and_bad_input():
  rng = np.random.default_rng(6)
  logits, deltas, anchors = _random_inputs(rng)

  def total_logit(lg):
    _, out_logits, valid, _, _ = proposals.generate_proposals(
      lg, deltas, anchors, IMAGE_SIZE, PRE, POST, THRESH
    )
    return jnp.sum(jnp.where(valid, out_logits, 0.0))

  grads = jax.jit(jax.grad(total_logit))(logits)
  assert all((np.asarray(g) == 0).all() for g in grads)
  with pytest.raises(ValueError, match="level 1"):
    proposals.generate_proposals(
      logits, [deltas[0], deltas[1][:3], deltas[2]], anchors, IMAGE_SIZE, PRE, POST, THRESH
    )


def _check_origins(boxes, logits, valid, levels, anchor_indices, inputs, weights, first_level):
  """Each kept proposal's reported anchor, decoded with its deltas and clipped, is its box."""
  logits_l, deltas_l, anchors_l = inputs
  boxes, logits, valid, levels, anchor_indices = map(
    np.asarray, (boxes, logits, valid, levels, anchor_indices)
  )
  assert (levels[~valid] == -1).all() and (anchor_indices[~valid] == -1).all()
  offsets = np.cumsum([0] + [len(a) for a in anchors_l])
  all_anchors, all_deltas = np.concatenate(anchors_l), np.concatenate(deltas_l)
  all_logits = np.concatenate(logits_l)
  index = anchor_indices[valid]
  level = levels[valid] - first_level
  # The anchor index falls inside the reported level's slice of the concatenation.
  assert ((index >= offsets[level]) & (index < offsets[level + 1])).all()
  np.testing.assert_array_equal(all_logits[index], logits[valid])
  decoded = _np_decode(all_anchors[index].astype(np.float64), all_deltas[index], weights)
  decoded[:, 0::2] = np.clip(decoded[:, 0::2], 0, IMAGE_SIZE[1])
  decoded[:, 1::2] = np.clip(decoded[:, 1::2], 0, IMAGE_SIZE[0])
  np.testing.assert_allclose(boxes[valid], decoded, rtol=1e-5, atol=1e-3)
  return level


def test_levels_and_anchor_indices_decode_to_the_proposals():
  rng = np.random.default_rng(7)
  inputs = _random_inputs(rng)
  weights = (10.0, 10.0, 5.0, 5.0)
  got = _generate(*inputs, 0.0, weights)
  assert int(np.asarray(got.valid).sum()) == POST
  level = _check_origins(*got, inputs, weights, first_level=0)
  assert set(level.tolist()) == {0, 1, 2}  # every level reaches the final list

  # Through models.rpn.propose (vmapped over a batch, flattened scores, levels from P2).
  logits, deltas, anchors = inputs
  out = jax.jit(
    lambda lg, dl: rpn.propose(lg, dl, anchors, IMAGE_SIZE, 12, 20, THRESH, 0.0, weights)
  )(np.concatenate(logits)[None], np.concatenate(deltas)[None])
  keys = ("boxes", "logits", "valid", "levels", "anchor_indices")
  level = _check_origins(*(out[k][0] for k in keys), inputs, weights, first_level=2)
  assert int(np.asarray(out["valid"]).sum()) == 20 and level.min() >= 0 and level.max() <= 2
