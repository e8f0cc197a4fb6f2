"""RPN proposals for one image: detectron2's find_top_rpn_proposals with static shapes.

The work is arranged so that nothing scales with the number of anchors except one top-k
per level, and no IoU matrix spans all levels:

1. per level, the top k_l = min(pre_nms_topk, N_l) anchors by logit, padded to a common
   k = max_l k_l so that the levels stack into [L, k];
2. only those L * k anchors are decoded, clipped and size-filtered;
3. NMS runs per level, vmapped over the level axis (each level's NMS sees k boxes and keeps
   at most min(k, post_nms_topk), since no more of one level can reach the final list);
4. the [L, min(k, post)] survivors are merged by one top-k on their logits.

Because detectron2 runs batched_nms with the level as the class, "NMS per level, then the
global top post_nms_topk by logit" is exactly its result.

Every kept proposal also carries where it came from (its level and anchor), for the analysis of
proposal filtering (the paper's Fig. 3b): these are gathers of indices the top-k already holds,
and XLA drops them from a compiled program that does not use them.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from segrpn_jax.ops import boxes as box_ops
from segrpn_jax.ops.nms import nms


class Proposals(NamedTuple):
  """The proposals of one image, sorted by logit descending; padding slots at the end.

  Attributes:
    boxes: [P, 4] float32 xyxy, zero on padding.
    logits: [P] float32 objectness logits, -inf on padding.
    valid: [P] bool.
    levels: [P] int32, the position in `anchors_by_level` of the level the proposal came
      from (0 = the first level given), -1 on padding.
    anchor_indices: [P] int32, the index of the proposal's anchor in the concatenation of
      `anchors_by_level` (level-major, the order of the flattened RPN logits), -1 on padding;
      the anchor within its level is anchor_indices - sum of the sizes of the levels before.
  """

  boxes: jax.Array
  logits: jax.Array
  valid: jax.Array
  levels: jax.Array
  anchor_indices: jax.Array


def _check_levels(logits_by_level, deltas_by_level, anchors_by_level):
  if not len(logits_by_level) == len(deltas_by_level) == len(anchors_by_level) > 0:
    raise ValueError(
      "proposals: logits_by_level, deltas_by_level and anchors_by_level must be non-empty "
      f"lists of the same length, got {len(logits_by_level)}, {len(deltas_by_level)} and "
      f"{len(anchors_by_level)}."
    )
  for level, (logits, deltas, anchors) in enumerate(
    zip(logits_by_level, deltas_by_level, anchors_by_level, strict=True)
  ):
    n = jnp.shape(logits)
    if len(n) != 1 or jnp.shape(deltas) != (*n, 4) or jnp.shape(anchors) != (*n, 4):
      raise ValueError(
        f"proposals: level {level} needs logits [N], deltas [N, 4] and anchors [N, 4] for one "
        f"image (vmap for a batch), got {jnp.shape(logits)}, {jnp.shape(deltas)} and "
        f"{jnp.shape(anchors)}."
      )


def select_topk_per_level(logits_by_level: Sequence, pre_nms_topk: int):
  """The pre-NMS top-k of every level, padded to a common k so the levels stack.

  Non-finite logits are never selected (detectron2 selects and then drops them, which only
  wastes slots).

  Args:
    logits_by_level: list of [N_l] objectness logits, one per level.
    pre_nms_topk: static number of anchors kept per level; a level with fewer anchors
      keeps all of them.

  Returns:
    (indices [L, k] int32 into each level's anchors, logits [L, k] sorted descending per
    level with -inf on padding, valid [L, k] bool), k = max_l min(pre_nms_topk, N_l).
  """
  if not isinstance(pre_nms_topk, int) or pre_nms_topk < 1:
    raise ValueError(
      f"proposals: pre_nms_topk must be a static int >= 1, got {pre_nms_topk!r} "
      "(config.model.rpn.pre_nms_topk_train/test)."
    )
  k = max(min(pre_nms_topk, jnp.shape(logits)[0]) for logits in logits_by_level)
  all_indices, all_logits, all_valid = [], [], []
  for logits_n in logits_by_level:
    logits_n = jnp.asarray(logits_n, jnp.float32)
    k_level = min(pre_nms_topk, logits_n.shape[0])
    finite = jnp.isfinite(logits_n)
    top_logits, top_indices = jax.lax.top_k(jnp.where(finite, logits_n, -jnp.inf), k_level)
    valid = top_logits > -jnp.inf
    pad = k - k_level
    all_indices.append(jnp.pad(top_indices.astype(jnp.int32), (0, pad)))
    all_logits.append(jnp.pad(top_logits, (0, pad), constant_values=-jnp.inf))
    all_valid.append(jnp.pad(valid, (0, pad)))
  return jnp.stack(all_indices), jnp.stack(all_logits), jnp.stack(all_valid)


def generate_proposals(
  logits_by_level: Sequence,
  deltas_by_level: Sequence,
  anchors_by_level: Sequence,
  image_size,
  pre_nms_topk: int,
  post_nms_topk: int,
  nms_threshold: float,
  min_size: float = 0.0,
  box_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
):
  """Turns per-level RPN outputs of ONE image into the top proposals (vmap for a batch).

  detectron2's find_top_rpn_proposals: per-level top-k by logit, decode, clip to the image,
  drop non-finite boxes and boxes whose width or height is not > min_size (detectron2's
  Boxes.nonempty, so at the default 0 empty boxes are dropped), NMS within each level,
  then the global top post_nms_topk by logit, sorted descending. Proposals are not
  differentiable (detectron2 detaches them), so the outputs carry no gradient.

  Args:
    logits_by_level: list of [N_l] objectness logits per level (already fused
      logit_det + logit_mask when the 'roi' fusion is on).
    deltas_by_level: list of [N_l, 4] box deltas.
    anchors_by_level: list of [N_l, 4] anchors (e.g. from anchors.generate_anchors).
    image_size: (height, width) of the image the boxes are clipped to; Python numbers or
      scalar arrays (traced per image under vmap).
    pre_nms_topk: static per-level number of candidates before NMS.
    post_nms_topk: static number of proposals returned.
    nms_threshold: IoU above which a lower-scoring box of the same level is suppressed.
    min_size: boxes need width and height > min_size (pixels).
    box_weights: Box2BoxTransform weights of the RPN.

  Returns:
    Proposals(boxes [P, 4], logits [P], valid [P] bool, levels [P] int32, anchor_indices [P]
    int32), P = post_nms_topk, sorted by logit, descending; padding slots have valid False,
    zero boxes, logit -inf and level and anchor index -1 (see `Proposals`).
  """
  _check_levels(logits_by_level, deltas_by_level, anchors_by_level)
  if not isinstance(post_nms_topk, int) or post_nms_topk < 1:
    raise ValueError(
      f"proposals: post_nms_topk must be a static int >= 1, got {post_nms_topk!r} "
      "(config.model.rpn.post_nms_topk_train/test)."
    )
  height, width = image_size
  logits_by_level = [jax.lax.stop_gradient(x) for x in logits_by_level]
  deltas_by_level = [jax.lax.stop_gradient(x) for x in deltas_by_level]

  # 1. Per-level top-k, stacked to [L, k].
  indices_lxk, logits_lxk, valid_lxk = select_topk_per_level(logits_by_level, pre_nms_topk)
  k = indices_lxk.shape[1]
  num_levels = indices_lxk.shape[0]
  offsets = jnp.asarray(
    [sum(jnp.shape(x)[0] for x in logits_by_level[:level]) for level in range(num_levels)],
    jnp.int32,
  )
  flat_indices_lxk = indices_lxk + offsets[:, None]  # into the concatenated anchors
  deltas_lxkx4 = jnp.stack(
    [jnp.asarray(d, jnp.float32)[indices_lxk[level]] for level, d in enumerate(deltas_by_level)]
  )
  anchors_lxkx4 = jnp.stack(
    [jnp.asarray(a, jnp.float32)[indices_lxk[level]] for level, a in enumerate(anchors_by_level)]
  )

  # 2. Decode only the selected anchors, clip, drop empty/small and non-finite boxes.
  boxes_lxkx4 = box_ops.decode(anchors_lxkx4, deltas_lxkx4, weights=tuple(box_weights))
  valid_lxk &= jnp.all(jnp.isfinite(boxes_lxkx4), axis=-1)
  boxes_lxkx4 = box_ops.clip(boxes_lxkx4, height, width)
  widths = boxes_lxkx4[..., 2] - boxes_lxkx4[..., 0]
  heights = boxes_lxkx4[..., 3] - boxes_lxkx4[..., 1]
  valid_lxk &= (widths > min_size) & (heights > min_size)
  boxes_lxkx4 = jnp.where(valid_lxk[..., None], boxes_lxkx4, 0.0)

  # 3. NMS per level, vmapped over levels; no level can contribute more than post_nms_topk.
  per_level = min(k, post_nms_topk)
  keep_lxm, keep_valid_lxm = jax.vmap(lambda b, s, v: nms(b, s, nms_threshold, per_level, valid=v))(
    boxes_lxkx4, logits_lxk, valid_lxk
  )
  kept_boxes = jnp.take_along_axis(boxes_lxkx4, keep_lxm[..., None], axis=1).reshape(-1, 4)
  kept_logits = jnp.where(
    keep_valid_lxm, jnp.take_along_axis(logits_lxk, keep_lxm, axis=1), -jnp.inf
  ).reshape(-1)
  kept_valid = keep_valid_lxm.reshape(-1)
  kept_levels = jnp.broadcast_to(
    jnp.arange(num_levels, dtype=jnp.int32)[:, None], keep_lxm.shape
  ).reshape(-1)
  kept_anchors = jnp.take_along_axis(flat_indices_lxk, keep_lxm, axis=1).reshape(-1)

  # 4. Merge the levels: the global top post_nms_topk by logit.
  take = min(post_nms_topk, kept_logits.shape[0])
  top_logits, top = jax.lax.top_k(kept_logits, take)
  out_valid = kept_valid[top]
  out_boxes = jnp.where(out_valid[:, None], kept_boxes[top], 0.0)
  out_logits = jnp.where(out_valid, top_logits, -jnp.inf)
  out_levels = jnp.where(out_valid, kept_levels[top], -1)
  out_anchors = jnp.where(out_valid, kept_anchors[top], -1)
  pad = post_nms_topk - take
  if pad:
    out_boxes = jnp.pad(out_boxes, ((0, pad), (0, 0)))
    out_logits = jnp.pad(out_logits, (0, pad), constant_values=-jnp.inf)
    out_valid = jnp.pad(out_valid, (0, pad))
    out_levels = jnp.pad(out_levels, (0, pad), constant_values=-1)
    out_anchors = jnp.pad(out_anchors, (0, pad), constant_values=-1)
  return Proposals(out_boxes, out_logits, out_valid, out_levels, out_anchors)
