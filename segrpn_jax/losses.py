"""The SegRPN training loss: a pure function of the training forward's outputs and the batch.

Every normalisation follows detectron2 where it has one:

  RPN (each of RPN_det, RPN_mask):  with B images and b = config.model.rpn.batch_size_per_image,
    objectness = sum of BCE over the sampled anchors (positives and negatives) / (b * B),
    box        = sum of L1 over the positive anchors' 4 deltas / (b * B).
  ROI head: with n = number of sampled ROIs in the batch (normally B * 512), max(n, 1),
    cls = mean softmax cross entropy over the n ROIs,
    box = sum of L1 over the foreground ROIs' 4 class-specific deltas / n.
  Semantic: per-pixel cross entropy of the stride-4 logits bilinearly upsampled to the input
    size (detectron2's SemSegFPNHead), mean over the pixels whose label is not 255.
  Class-agnostic: per level, BCE against ops.scale.class_agnostic_targets, mean over the cells
    of weight 1 (crowd cells are ignored); the 5 levels are averaged with equal weight.
  Class-agnostic map: BCE of the stride-4 map logits bilinearly upsampled to the input size
    (as the semantic loss) against the full-resolution foreground (`foreground_target`), mean
    over the pixels that are not ignored.

Which predictions each RPN loss sees under a train fusion: RPN_det's loss uses the fused
objectness logits and the deltas that make the proposals (`outputs['rpn_det']`), so with `roi`
fusion its gradient also reaches RPN_mask; RPN_mask's loss uses RPN_mask's own logits and deltas
(`outputs['rpn_mask']`). Both use the same anchor matching and independent samples.

total = loss.rpn_det * (rpn_det/objectness + rpn_det/box)
      + loss.rpn_mask * (rpn_mask/objectness + rpn_mask/box)
      + loss.roi_cls * roi/cls + loss.roi_box * roi/box
      + loss.semantic * semantic + loss.class_agnostic * class_agnostic
      + loss.class_agnostic_map * class_agnostic_map,
with the terms of absent branches left out. Everything is computed in float32.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from segrpn_jax.ops import scale
from segrpn_jax.ops.resize import resize_bilinear


def rpn_losses(rpn: dict, targets: dict, batch_size_per_image: int) -> tuple[jax.Array, jax.Array]:
  """Objectness and box loss of one RPN (detectron2 StandardRPNHead.losses).

  Args:
    rpn: logits [B, N], deltas [B, N, 4], positive [B, N] bool, negative [B, N] bool (the
      sampled anchors).
    targets: deltas [B, N, 4], the encoded matched ground truth (box weights 1, 1, 1, 1).
    batch_size_per_image: b, anchors sampled per image.

  Returns:
    (objectness, box): BCE summed over sampled anchors / (b * B), L1 summed over positive
    anchors / (b * B).
  """
  logits = rpn["logits"].astype(jnp.float32)
  positive, negative = rpn["positive"], rpn["negative"]
  normalizer = float(batch_size_per_image * logits.shape[0])
  bce = optax.sigmoid_binary_cross_entropy(logits, positive.astype(jnp.float32))
  objectness = jnp.sum(jnp.where(positive | negative, bce, 0.0)) / normalizer
  l1 = jnp.abs(rpn["deltas"].astype(jnp.float32) - targets["deltas"])
  box = jnp.sum(jnp.where(positive[..., None], l1, 0.0)) / normalizer
  return objectness, box


def roi_losses(roi: dict) -> tuple[jax.Array, jax.Array]:
  """Classification and box loss of the sampled ROIs (detectron2 FastRCNNOutputLayers.losses).

  Args:
    roi: cls_logits [B, S, K + 1], deltas [B, S, 4K], gt_classes [B, S] (0 = background),
      regression_targets [B, S, 4], foreground [B, S] bool, sampled [B, S] bool.

  Returns:
    (cls, box): cross entropy averaged over the n sampled ROIs; L1 of the foreground ROIs'
    deltas for their ground-truth class, summed and divided by n (n = max(#sampled, 1)).
  """
  sampled = roi["sampled"]
  n = jnp.maximum(jnp.sum(sampled), 1).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(
    roi["cls_logits"].astype(jnp.float32), roi["gt_classes"]
  )
  cls = jnp.sum(jnp.where(sampled, ce, 0.0)) / n
  b, s, four_k = roi["deltas"].shape
  deltas = roi["deltas"].astype(jnp.float32).reshape(b, s, four_k // 4, 4)
  column = jnp.maximum(roi["gt_classes"] - 1, 0)  # class k >= 1 uses deltas[k - 1]
  chosen = jnp.take_along_axis(deltas, column[:, :, None, None], axis=2)[:, :, 0]
  l1 = jnp.abs(chosen - roi["regression_targets"])
  foreground = roi["foreground"] & sampled
  box = jnp.sum(jnp.where(foreground[..., None], l1, 0.0)) / n
  return cls, box


def semantic_loss(logits_bxhxwxk: jax.Array, labels_bxhxw: jax.Array, ignore_label: int = 255):
  """Cross entropy of bilinearly upsampled logits, mean over non-ignored pixels.

  Args:
    logits_bxhxwxk: [B, h, w, K] logits (stride 4).
    labels_bxhxw: [B, H, W] int labels, ignore_label = ignore.
    ignore_label: the label that contributes nothing.

  Returns:
    scalar; 0 when every pixel is ignored.
  """
  height, width = labels_bxhxw.shape[1:]
  # Half-pixel centres: PyTorch interpolate(align_corners=False).
  logits = resize_bilinear(logits_bxhxwxk.astype(jnp.float32), height, width)
  keep = labels_bxhxw != ignore_label
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, labels_bxhxw, 0))
  return jnp.sum(jnp.where(keep, ce, 0.0)) / jnp.maximum(jnp.sum(keep), 1).astype(jnp.float32)


def class_agnostic_loss(logits_by_level, batch: dict, config: ml_collections.ConfigDict):
  """Per-level BCE against the scale-specific targets, mean over cells, averaged over levels.

  Args:
    logits_by_level: [B, H_l, W_l] foreground logits of P2..P6.
    batch: the batch (boxes, valid, instance_map, crowd).
    config: the full config (model.scale_case, model.size_scale, model.anchor.strides).

  Returns:
    scalar: mean over levels of (sum of weighted BCE / max(sum of weights, 1)).
  """
  m = config.model

  def one_image(boxes, valid, instance_map, crowd):
    membership = scale.level_membership(boxes, m.scale_case, m.size_scale, valid=valid)
    return scale.class_agnostic_targets(
      instance_map, boxes, membership, valid, crowd, strides=tuple(m.anchor.strides)
    )

  targets, weights = jax.vmap(one_image)(
    batch["boxes"].astype(jnp.float32),
    batch["valid"].astype(bool),
    batch["instance_map"],
    batch["crowd"].astype(bool),
  )
  per_level = []
  for logits, target, weight in zip(logits_by_level, targets, weights, strict=True):
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), target)
    per_level.append(jnp.sum(weight * bce) / jnp.maximum(jnp.sum(weight), 1.0))
  return jnp.mean(jnp.stack(per_level))


def foreground_target(
  instance_map_bxhxw: jax.Array,
  valid_bxn: jax.Array,
  crowd_bxhxw: jax.Array,
  semantic_bxhxw: jax.Array,
  ignore_label: int = 255,
) -> tuple[jax.Array, jax.Array]:
  """The full-resolution binary target of the class-agnostic map.

  Args:
    instance_map_bxhxw: [B, H, W] int; k >= 1 is the instance of box k - 1, 0 none.
    valid_bxn: [B, N] bool; an invalid (padding) instance is not foreground, as in
      ops.scale.class_agnostic_targets.
    crowd_bxhxw: [B, H, W] bool crowd/group regions (thing pixels without an instance).
    semantic_bxhxw: [B, H, W] int semantic labels.
    ignore_label: the semantic label of unlabelled pixels.

  Returns:
    (target, weight), both float32 [B, H, W]: target 1 on the pixels of valid instances
    (things), 0 elsewhere (stuff); weight 0 on crowd and unlabelled pixels unless they are
    foreground (foreground wins, as in the per-level targets), 1 elsewhere.
  """
  b = valid_bxn.shape[0]
  # Row k of the table: is instance id k a valid instance? Id 0 (no instance) never is.
  table = jnp.concatenate([jnp.zeros((b, 1), bool), valid_bxn.astype(bool)], axis=1)
  foreground = jax.vmap(lambda t, ids: t[ids])(table, instance_map_bxhxw)
  ignore = (crowd_bxhxw.astype(bool) | (semantic_bxhxw == ignore_label)) & ~foreground
  return foreground.astype(jnp.float32), (~ignore).astype(jnp.float32)


def class_agnostic_map_loss(logits_bxhxw: jax.Array, batch: dict) -> jax.Array:
  """BCE of the stride-4 class-agnostic map, upsampled to the input, against the foreground.

  Args:
    logits_bxhxw: [B, h, w] logits (stride 4).
    batch: the batch (instance_map, valid, crowd, semantic).

  Returns:
    scalar: sum of BCE over the non-ignored pixels / max(their count, 1).
  """
  target, weight = foreground_target(
    batch["instance_map"], batch["valid"], batch["crowd"], batch["semantic"]
  )
  height, width = target.shape[1:]
  # Half-pixel centres, like the semantic loss.
  logits = resize_bilinear(logits_bxhxw.astype(jnp.float32)[..., None], height, width)[..., 0]
  bce = optax.sigmoid_binary_cross_entropy(logits, target)
  return jnp.sum(weight * bce) / jnp.maximum(jnp.sum(weight), 1.0)


def segrpn_loss(outputs: dict, batch: dict, config: ml_collections.ConfigDict):
  """The weighted total loss and its parts.

  Args:
    outputs: the training forward's outputs (SegRPN(..., train=True)).
    batch: the batch (batch contract).
    config: the full config (config.loss weights, config.model).

  Returns:
    (total, parts): parts holds every unweighted term (keys rpn_det/objectness, rpn_det/box,
    rpn_mask/objectness, rpn_mask/box, roi/cls, roi/box, semantic, class_agnostic,
    class_agnostic_map - those of the branches the model has) and the diagnostic
    fg_roi_fraction: foreground (IoU >= 0.5 with a valid ground truth) proposals among the
    valid proposals kept after NMS, before the ground truth is appended and ROIs are sampled
    (the paper's Fig. 6), over the whole batch.
  """
  w, m = config.loss, config.model
  parts = {}
  total = jnp.zeros((), jnp.float32)
  for name, weight in (("rpn_det", w.rpn_det), ("rpn_mask", w.rpn_mask)):
    if name in outputs:
      obj, box = rpn_losses(outputs[name], outputs["rpn_targets"], m.rpn.batch_size_per_image)
      parts[f"{name}/objectness"], parts[f"{name}/box"] = obj, box
      total = total + weight * (obj + box)
  cls, box = roi_losses(outputs["roi"])
  parts["roi/cls"], parts["roi/box"] = cls, box
  total = total + w.roi_cls * cls + w.roi_box * box
  if "semantic_logits" in outputs:
    parts["semantic"] = semantic_loss(outputs["semantic_logits"], batch["semantic"])
    total = total + w.semantic * parts["semantic"]
  if "class_agnostic_logits" in outputs:
    parts["class_agnostic"] = class_agnostic_loss(outputs["class_agnostic_logits"], batch, config)
    total = total + w.class_agnostic * parts["class_agnostic"]
  if "class_agnostic_map_logits" in outputs:
    parts["class_agnostic_map"] = class_agnostic_map_loss(
      outputs["class_agnostic_map_logits"], batch
    )
    total = total + w.class_agnostic_map * parts["class_agnostic_map"]
  roi = outputs["roi"]
  parts["fg_roi_fraction"] = jnp.sum(roi["num_fg_proposals"]) / jnp.maximum(
    jnp.sum(roi["num_valid_proposals"]), 1.0
  )
  # Also logged as fg_rois_per_2000: the paper's Fig. 6 counts foreground ROIs among 2000
  # proposals after NMS (its post_nms_topk_train); the fraction scaled to 2000 reads on that
  # axis whatever number of proposals a run keeps.
  parts["fg_rois_per_2000"] = parts["fg_roi_fraction"] * 2000.0
  return total, parts
