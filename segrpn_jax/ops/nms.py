"""Exact greedy non-maximum suppression with static shapes.

The result is the one torchvision's `nms` gives: boxes visited by descending score (ties in
index order, as a stable sort), a box kept unless a kept box of higher rank overlaps it with
IoU > threshold, truncated to `max_output`. It is exact for every threshold, not only > 0.5.

How it stays fast without an O(N) Python loop or an N x N IoU matrix: the boxes are sorted once
and visited in tiles of `_TILE` boxes inside a `lax.while_loop`.

1. A tile is first suppressed by every box kept so far, which live in a compact buffer of at
   most `max_output` boxes: one [T, max_output] IoU block.
2. Inside the tile greedy NMS is the fixed point of
       keep_i = candidate_i and not any(keep_j and IoU_ij > t for j < i),
   and iterating that map from keep = candidate reaches it: keep_i only depends on keep_j
   for j < i, so after k rounds the first k entries are final and the map has exactly one
   fixed point, the greedy answer. Typical tiles settle in a few rounds of one [T, T] block.
3. The tile's kept boxes are appended to the buffer; the loop stops once `max_output` boxes
   are kept or the valid boxes run out.

Work is O(N * (max_output + T)) IoUs instead of O(N^2), and memory O(T * max_output).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from segrpn_jax.ops.boxes import iou

# Sorted boxes resolved per while-loop step. 256 balances the [T, T] fixed-point rounds
# against the number of loop steps (see scripts/bench_ops.py).
_TILE = 256


def _check_inputs(boxes_nx4, scores_n, max_output):
  if boxes_nx4.ndim != 2 or boxes_nx4.shape[-1] != 4:
    raise ValueError(f"nms: boxes must be [N, 4] (vmap for a batch), got shape {boxes_nx4.shape}.")
  if scores_n.shape != boxes_nx4.shape[:1]:
    raise ValueError(
      f"nms: scores must be [N] = {boxes_nx4.shape[:1]} to match boxes, got {scores_n.shape}."
    )
  if not isinstance(max_output, int) or max_output < 1:
    raise ValueError(f"nms: max_output must be a static int >= 1, got {max_output!r}.")


def _float32_threshold(iou_threshold):
  """The float32 t' with (iou > t') == (iou > iou_threshold) for every float32 iou.

  torchvision compares the float32 IoU with the threshold as a C++ double. A Python float such
  as 0.3 rounds *up* to float32, which would keep a box whose IoU is exactly float32(0.3);
  rounding the threshold down instead reproduces the double comparison. A traced threshold is
  already float32 and is used as it is.
  """
  if isinstance(iou_threshold, int | float | np.floating):
    t32 = np.float32(iou_threshold)
    if float(t32) > float(iou_threshold):
      t32 = np.nextafter(t32, np.float32(-np.inf))
    return t32
  return jnp.asarray(iou_threshold, jnp.float32)


def _greedy_nms(boxes_nx4, scores_n, classes_n, iou_threshold, max_output, valid_n):
  """Greedy NMS within classes; see the module docstring for the algorithm."""
  boxes_nx4 = jnp.asarray(boxes_nx4, jnp.float32)
  scores_n = jnp.asarray(scores_n, jnp.float32)
  _check_inputs(boxes_nx4, scores_n, max_output)
  iou_threshold = _float32_threshold(iou_threshold)
  n = boxes_nx4.shape[0]
  if n == 0:
    return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)
  usable = scores_n > -jnp.inf  # False for -inf and NaN: never kept
  if valid_n is not None:
    usable &= jnp.asarray(valid_n, bool)
  # Unusable boxes sort last; -0.0 is folded into 0.0 so it ties with 0.0 as in torch.sort.
  key = jnp.where(usable, jnp.where(scores_n == 0, 0.0, scores_n), -jnp.inf)
  order = jnp.argsort(-key, stable=True).astype(jnp.int32)
  num_usable = jnp.sum(usable, dtype=jnp.int32)

  tile = min(_TILE, n)
  num_tiles = -(-n // tile)
  pad = num_tiles * tile - n
  sorted_boxes = jnp.pad(boxes_nx4[order], ((0, pad), (0, 0)))
  sorted_classes = jnp.pad(classes_n[order], (0, pad))
  sorted_usable = jnp.pad(usable[order], (0, pad))
  cap = min(max_output, n)  # the kept-box buffer never needs more slots than boxes

  rank_in_tile = jnp.arange(tile)
  earlier_in_tile = rank_in_tile[None, :] < rank_in_tile[:, None]  # [i, j]: j precedes i

  def cond(state):
    t, count = state[0], state[1]
    return (t < num_tiles) & (count < cap) & (t * tile < num_usable)

  def body(state):
    t, count, kept_boxes, kept_classes, kept_rank = state
    start = t * tile
    tile_boxes = lax.dynamic_slice_in_dim(sorted_boxes, start, tile)
    tile_classes = lax.dynamic_slice_in_dim(sorted_classes, start, tile)
    tile_usable = lax.dynamic_slice_in_dim(sorted_usable, start, tile)

    # 1. Suppression by the boxes kept in earlier tiles.
    filled = jnp.arange(cap) < count
    hits = (iou(tile_boxes, kept_boxes) > iou_threshold) & filled[None, :]
    hits &= tile_classes[:, None] == kept_classes[None, :]
    candidate = tile_usable & ~jnp.any(hits, axis=1)

    # 2. Greedy within the tile as a fixed point (exact; see the module docstring).
    overlaps = (iou(tile_boxes, tile_boxes) > iou_threshold) & earlier_in_tile
    overlaps &= tile_classes[:, None] == tile_classes[None, :]

    def step(keep):
      return candidate & ~jnp.any(overlaps & keep[None, :], axis=1)

    def not_settled(carry):
      keep, previous = carry
      return jnp.any(keep != previous)

    def settle(carry):
      keep, _ = carry
      return step(keep), keep

    keep, _ = lax.while_loop(not_settled, settle, (step(candidate), candidate))

    # 3. Append the tile's survivors (in rank order) to the buffer; overflow is dropped.
    slot = jnp.where(keep, count + jnp.cumsum(keep) - 1, cap)
    kept_boxes = kept_boxes.at[slot].set(tile_boxes, mode="drop")
    kept_classes = kept_classes.at[slot].set(tile_classes, mode="drop")
    kept_rank = kept_rank.at[slot].set(start + rank_in_tile, mode="drop")
    count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), cap)
    return t + 1, count, kept_boxes, kept_classes, kept_rank

  init = (
    jnp.int32(0),
    jnp.int32(0),
    jnp.zeros((cap, 4), jnp.float32),
    jnp.zeros((cap,), sorted_classes.dtype),
    jnp.zeros((cap,), jnp.int32),
  )
  _, count, _, _, kept_rank = lax.while_loop(cond, body, init)

  out_valid = jnp.arange(max_output) < count
  kept_rank = jnp.pad(kept_rank, (0, max_output - cap))
  indices = jnp.where(out_valid, order[kept_rank], 0)
  return indices.astype(jnp.int32), out_valid


def nms(boxes_nx4, scores_n, iou_threshold, max_output, valid=None):
  """Greedy NMS, identical to torchvision.ops.nms truncated to `max_output`.

  Args:
    boxes_nx4: [N, 4] boxes [x1, y1, x2, y2].
    scores_n: [N] scores; higher is visited first, equal scores in index order.
    iou_threshold: a box is suppressed by a kept box when their IoU is > this. A Python float
      is compared exactly as torchvision does (in double precision); a traced value is
      compared in float32.
    max_output: static number of output slots.
    valid: optional [N] bool; False entries (padding) are never kept. Entries whose score is
      -inf or NaN are never kept either.

  Returns:
    (indices [max_output] int32, valid [max_output] bool): kept box indices into `boxes_nx4`
    by descending score; slots past the number kept have valid False and index 0.
  """
  classes = jnp.zeros(scores_n.shape, jnp.int32)
  return _greedy_nms(boxes_nx4, scores_n, classes, iou_threshold, max_output, valid)


def batched_nms(boxes_nx4, scores_n, classes_n, iou_threshold, max_output, valid=None):
  """Greedy NMS within each class, identical to torchvision.ops.batched_nms.

  Instead of torchvision's coordinate-offset trick, boxes of different classes are simply
  never compared, which equals running `nms` per class and merging by score with no
  floating-point change to the boxes.

  Args:
    boxes_nx4: [N, 4] boxes.
    scores_n: [N] scores.
    classes_n: [N] integer class of each box; only boxes of the same class suppress each other.
    iou_threshold: suppression threshold (IoU > threshold).
    max_output: static number of output slots.
    valid: optional [N] bool mask of real entries.

  Returns:
    (indices [max_output] int32, valid [max_output] bool), as for `nms`.
  """
  if classes_n.shape != scores_n.shape:
    raise ValueError(
      f"batched_nms: classes must be [N] = {scores_n.shape} to match scores, got {classes_n.shape}."
    )
  classes = jnp.asarray(classes_n).astype(jnp.int32)
  return _greedy_nms(boxes_nx4, scores_n, classes, iou_threshold, max_output, valid)
