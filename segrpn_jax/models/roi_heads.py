"""The Fast R-CNN ROI head: multi-level RoIAlign, 2-FC box head, training-time ROI sampling and
inference post-processing (detectron2 StandardROIHeads with FastRCNNConvFCHead, static shapes).

Class layout: index 0 is background, 1..K the thing classes (detectron2 puts background last; the
data contract puts it first). The class-specific deltas of class k >= 1 are columns 4(k-1)..4k-1.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from segrpn_jax.ops import boxes as box_ops
from segrpn_jax.ops import matching, nms, roi_align

# detectron2 c2_xavier_fill = kaiming_uniform(a=1): U(-sqrt(3 / fan_in), sqrt(3 / fan_in)).
_XAVIER_FILL = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


class BoxHead(nn.Module):
  """Two FC layers + ReLU, then the classifier and the class-specific box regressor.

  Attributes:
    num_classes: K thing classes (the classifier has K + 1 outputs, 0 = background).
    fc_dim: width of the two FC layers.
    dtype: compute dtype.
  """

  num_classes: int
  fc_dim: int = 1024
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled_bxrxsxsxc: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Scores and deltas of pooled ROIs.

    Args:
      pooled_bxrxsxsxc: [B, R, S, S, C] RoIAlign output.

    Returns:
      (class logits [B, R, K + 1], deltas [B, R, 4K]) in float32.
    """
    b, r = pooled_bxrxsxsxc.shape[:2]
    x = pooled_bxrxsxsxc.reshape(b, r, -1)
    for i in range(2):
      x = nn.relu(
        nn.Dense(self.fc_dim, kernel_init=_XAVIER_FILL, dtype=self.dtype, name=f"fc{i}")(x)
      )
    cls_logits = nn.Dense(
      self.num_classes + 1,
      kernel_init=nn.initializers.normal(0.01),
      dtype=self.dtype,
      name="cls_score",
    )(x)
    deltas = nn.Dense(
      4 * self.num_classes,
      kernel_init=nn.initializers.normal(0.001),
      dtype=self.dtype,
      name="bbox_pred",
    )(x)
    return cls_logits.astype(jnp.float32), deltas.astype(jnp.float32)


def pool_rois(
  features_by_level: Sequence[jnp.ndarray],
  boxes_bxrx4: jnp.ndarray,
  canonical_size: float,
  canonical_level: int,
  output_size: int,
  sampling_ratio: int,
) -> jnp.ndarray:
  """Multi-level RoIAlign: each ROI is pooled from its FPN level k = floor(k0 + log2(sqrt(wh)/c)).

  Args:
    features_by_level: [B, H_l, W_l, C] maps of P2..P5 (level 2 first).
    boxes_bxrx4: [B, R, 4] ROIs in input pixels.
    canonical_size: c of the level rule (224, or 128 for case3).
    canonical_level: k0 of the level rule.
    output_size: S, the pooled side (7).
    sampling_ratio: bilinear samples per bin side.

  Returns:
    [B, R, S, S, C].
  """
  max_level = 2 + len(features_by_level) - 1

  def one_image(boxes_rx4, *maps):
    levels = box_ops.fpn_level(
      boxes_rx4, canonical_size, canonical_level, min_level=2, max_level=max_level
    )
    return roi_align.multilevel_roi_align(
      list(maps), boxes_rx4, levels, output_size, min_level=2, sampling_ratio=sampling_ratio
    )

  return jax.vmap(one_image)(boxes_bxrx4, *features_by_level)


def sample_rois(
  proposals_px4: jnp.ndarray,
  proposal_valid_p: jnp.ndarray,
  gt_boxes_gx4: jnp.ndarray,
  gt_classes_g: jnp.ndarray,
  gt_valid_g: jnp.ndarray,
  key: jax.Array,
  batch_size_per_image: int,
  positive_fraction: float,
  fg_iou_threshold: float,
  box_weights: Sequence[float],
) -> dict:
  """Training ROIs of one image (detectron2 label_and_sample_proposals), static shapes.

  The ground-truth boxes are appended to the proposals (proposal_append_gt); a ROI is foreground
  when its IoU with some valid ground truth is >= fg_iou_threshold (matcher without low-quality
  matches), background otherwise. Invalid proposals, padding and zero-size ground truth are never
  sampled; the proposals carry no gradient.

  Args:
    proposals_px4: [P, 4] proposals.
    proposal_valid_p: [P] bool.
    gt_boxes_gx4: [G, 4] ground truth boxes.
    gt_classes_g: [G] int32 classes 1..K.
    gt_valid_g: [G] bool.
    key: PRNG key of the sampler.
    batch_size_per_image: ROIs sampled (512).
    positive_fraction: at most this fraction of them foreground (0.25).
    fg_iou_threshold: foreground IoU (0.5).
    box_weights: ROI Box2BoxTransform weights (10, 10, 5, 5).

  Returns:
    dict with, for the S = batch_size_per_image sampled ROIs,
      boxes [S, 4], gt_classes [S] (0 = background), regression_targets [S, 4] (0 unless
      foreground), foreground [S] bool, sampled [S] bool (False = padding, fewer candidates);
    and the proposal statistics of the paper's Fig. 6 (before the gt append and sampling):
      num_fg_proposals, num_valid_proposals (scalars, float32).
  """
  gt_ok = gt_valid_g & (box_ops.area(gt_boxes_gx4) > 0)
  proposals = jax.lax.stop_gradient(proposals_px4)
  boxes = jnp.concatenate([proposals, gt_boxes_gx4], axis=0)
  valid = jnp.concatenate([proposal_valid_p, gt_ok], axis=0)
  iou_gxn = box_ops.iou(gt_boxes_gx4, boxes)
  matched, labels = matching.match(
    iou_gxn,
    gt_ok,
    thresholds=(fg_iou_threshold, fg_iou_threshold),  # [t, t) is empty: no ignored band
    labels=(0, -1, 1),
    allow_low_quality_matches=False,
  )
  idx, positive, sampled = matching.sample_indices(
    labels, batch_size_per_image, positive_fraction, key, valid_a=valid
  )
  roi_boxes = boxes[idx]
  matched_boxes = gt_boxes_gx4[matched[idx]]
  positive = positive & sampled
  # Encode only foreground pairs; background/padding ROIs may be zero-size (log(0) otherwise).
  unit = jnp.array([0.0, 0.0, 1.0, 1.0], boxes.dtype)
  targets = box_ops.encode(
    jnp.where(positive[:, None], roi_boxes, unit),
    jnp.where(positive[:, None], matched_boxes, unit),
    tuple(box_weights),
  )
  p = proposals_px4.shape[0]
  proposal_max_iou = jnp.max(jnp.where(gt_ok[:, None], iou_gxn[:, :p], 0.0), axis=0, initial=0.0)
  proposal_fg = proposal_valid_p & (proposal_max_iou >= fg_iou_threshold)
  return {
    "boxes": roi_boxes,
    "gt_classes": jnp.where(positive, gt_classes_g[matched[idx]], 0).astype(jnp.int32),
    "regression_targets": jnp.where(positive[:, None], targets, 0.0),
    "foreground": positive,
    "sampled": sampled,
    "num_fg_proposals": jnp.sum(proposal_fg).astype(jnp.float32),
    "num_valid_proposals": jnp.sum(proposal_valid_p).astype(jnp.float32),
  }


def postprocess(
  cls_logits_rxk1: jnp.ndarray,
  deltas_rx4k: jnp.ndarray,
  proposals_rx4: jnp.ndarray,
  proposal_valid_r: jnp.ndarray,
  image_size: tuple[int, int],
  box_weights: Sequence[float],
  score_threshold: float,
  nms_threshold: float,
  max_detections: int,
) -> dict:
  """Detections of one image (detectron2 fast_rcnn_inference_single_image), static shapes.

  Softmax over K + 1 classes; every (ROI, thing class) pair is a candidate box decoded with its
  class-specific deltas and clipped; candidates with score > score_threshold, a valid proposal
  and finite coordinates go through per-class NMS; the best max_detections by score are kept.

  Args:
    cls_logits_rxk1: [R, K + 1] logits (0 = background).
    deltas_rx4k: [R, 4K] class-specific deltas.
    proposals_rx4: [R, 4] proposals.
    proposal_valid_r: [R] bool.
    image_size: (height, width) for clipping.
    box_weights: ROI Box2BoxTransform weights.
    score_threshold: minimum class probability (0.05).
    nms_threshold: per-class NMS IoU (0.5).
    max_detections: D (100).

  Returns:
    dict boxes [D, 4], scores [D], classes [D] int32 (1..K), valid [D] bool, sorted by score
    descending; invalid rows are zeros.
  """
  r = cls_logits_rxk1.shape[0]
  k = cls_logits_rxk1.shape[1] - 1
  scores_rxk = jax.nn.softmax(cls_logits_rxk1.astype(jnp.float32), axis=-1)[:, 1:]
  deltas_rxkx4 = deltas_rx4k.astype(jnp.float32).reshape(r, k, 4)
  boxes_rxkx4 = box_ops.decode(proposals_rx4[:, None, :], deltas_rxkx4, tuple(box_weights))
  boxes_rxkx4 = box_ops.clip(boxes_rxkx4, image_size[0], image_size[1])
  classes_rxk = jnp.broadcast_to(jnp.arange(1, k + 1, dtype=jnp.int32), (r, k))
  candidate = (
    (scores_rxk > score_threshold)
    & proposal_valid_r[:, None]
    & jnp.all(jnp.isfinite(boxes_rxkx4), axis=-1)
  )
  boxes_nx4 = boxes_rxkx4.reshape(r * k, 4)
  scores_n = scores_rxk.reshape(r * k)
  classes_n = classes_rxk.reshape(r * k)
  keep, keep_valid = nms.batched_nms(
    boxes_nx4, scores_n, classes_n, nms_threshold, max_detections, valid=candidate.reshape(r * k)
  )
  return {
    "boxes": jnp.where(keep_valid[:, None], boxes_nx4[keep], 0.0),
    "scores": jnp.where(keep_valid, scores_n[keep], 0.0),
    "classes": jnp.where(keep_valid, classes_n[keep], 0),
    "valid": keep_valid,
  }
