"""SegRPN: ResNet-FPN Faster R-CNN + Panoptic-FPN semantic head + class-agnostic module + RPN_mask.

Data flow (docs/architecture.md):

  images -> ResNet (C2..C5) -> FPN (P2..P6)
    P2..P6 -> RPN_det 3x3 conv -> F_det
    P2..P6 -> class-agnostic module -> M_l (-> level logits, -> prior q -> stride-4 map logits)
      M_l -> RPN_mask 3x3 conv -> F_mask
    F_det, F_mask -> fused anchor scoring (rpn.fused_scoring, `fusion`) -> proposals
    proposals (+ gt and sampling in training) -> RoIAlign on P2..P5 -> box head -> detections
    P2..P5 (+ prior q) -> semantic head -> semantic logits at stride 4
  (seg_heads' module docstring has the wiring of both segmentation heads.)

Everything up to the RPN feature maps F_det, F_mask (`_trunk`) is independent of the fusion;
`predict_fusions` runs it once and only the scoring, proposals and box head once per fusion.

Training (`train=True`) also matches and samples the anchors of both RPNs and the ROIs of the box
head with the 'sampling' rng (one key per image and purpose), so that `losses.segrpn_loss` is a
pure function of the outputs and the batch.

The baseline (config.model.class_agnostic False) builds neither the class-agnostic module nor
RPN_mask; config.model.rpn_mask False keeps the class-agnostic module and its prior to the
semantic head but builds no RPN_mask (the paper's Fig. 5 network, "when RPN_mask is not
attached"; fusion 'none' only); config.model.semantic_head False drops the semantic head (plain
Faster R-CNN).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from segrpn_jax import errors
from segrpn_jax.models import rpn as rpn_lib
from segrpn_jax.models.fpn import FPN, LEVELS, ROI_LEVELS
from segrpn_jax.models.resnet import ResNet
from segrpn_jax.models.roi_heads import BoxHead, pool_rois, postprocess, sample_rois
from segrpn_jax.models.seg_heads import ClassAgnosticModule, SemanticHead
from segrpn_jax.ops import anchors as anchor_ops
from segrpn_jax.ops import boxes as box_ops
from segrpn_jax.ops import matching
from segrpn_jax.ops.resize import resize_bilinear

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@functools.lru_cache(maxsize=8)
def anchors_for(image_size, strides, sizes, aspect_ratios, offset) -> tuple[np.ndarray, ...]:
  """The per-level anchors of an input size (host constants, cached)."""
  return tuple(
    anchor_ops.generate_anchors(
      image_size[0], image_size[1], strides, sizes, aspect_ratios, offset=offset
    )
  )


def resnet_depth(backbone: str) -> int:
  """The depth of a 'resnetNN' backbone name, or an error naming config.model.backbone."""
  names = {f"resnet{d}": d for d in (18, 34, 50, 101)}
  if backbone not in names:
    raise ValueError(f"config.model.backbone = {backbone!r}; use one of {sorted(names)}.")
  return names[backbone]


def compute_dtype(name: str):
  """The jnp dtype of config.model.dtype."""
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype = {name!r}; use one of {sorted(DTYPES)}.")
  return DTYPES[name]


def has_rpn_mask(model_config: ml_collections.ConfigDict) -> bool:
  """Whether a model has RPN_mask: the class-agnostic module and config.model.rpn_mask (a run
  saved before that key existed has RPN_mask).

  Args:
    model_config: config.model.
  """
  return bool(model_config.class_agnostic and model_config.get("rpn_mask", True))


def check_fusion(model_config: ml_collections.ConfigDict, fusion: str, where: str) -> str:
  """`rpn.check_fusion` for a model config, with one readable error for a fusion on a model
  without RPN_mask.

  Args:
    model_config: config.model.
    fusion: the requested fusion.
    where: the config key or argument that carried it, for the message.

  Returns:
    `fusion` unchanged.

  Raises:
    errors.ConfigError: a fusion other than 'none' with config.model.rpn_mask False.
    ValueError: not a fusion, or a fusion on the baseline (`rpn.check_fusion`).
  """
  mask = has_rpn_mask(model_config)
  if model_config.class_agnostic and not mask and fusion in rpn_lib.FUSIONS[1:]:
    raise errors.ConfigError(
      f"{where} = {fusion!r} fuses RPN_mask into RPN_det, but config.model.rpn_mask = False "
      "(SegRPN without RPN_mask, which builds none); set the fusion to 'none', or "
      "config.model.rpn_mask = True."
    )
  return rpn_lib.check_fusion(fusion, where, has_mask=mask)


class SegRPN(nn.Module):
  """The whole network.

  Attributes:
    config: config.model as a FrozenConfigDict (hashable, so the module is a static jit arg).
    image_size: (height, width) of config.data.image_size; fixes the anchors.
  """

  config: ml_collections.FrozenConfigDict
  image_size: tuple[int, int]

  @property
  def has_rpn_mask(self) -> bool:
    """Whether RPN_mask is built (see `has_rpn_mask`)."""
    return has_rpn_mask(self.config)

  def setup(self):
    m = self.config
    dtype = compute_dtype(m.dtype)
    num_anchors = len(m.anchor.aspect_ratios)
    for key in ("train", "inference"):
      if m.class_agnostic:
        check_fusion(m, m.fusion[key], f"config.model.fusion.{key}")
      else:  # the baseline's fusion is refused where it is used (see `_scores`)
        rpn_lib.check_fusion(m.fusion[key], f"config.model.fusion.{key}")
    self.backbone = ResNet(
      depth=resnet_depth(m.backbone),
      norm=m.norm,
      width_multiplier=m.width_multiplier,
      dtype=dtype,
      freeze_at=m.freeze_at,
    )
    self.fpn = FPN(m.fpn_channels, dtype=dtype)
    self.rpn_det = rpn_lib.RPNHead(m.fpn_channels, num_anchors, dtype=dtype)
    if m.class_agnostic:
      self.class_agnostic = ClassAgnosticModule(
        m.get("class_agnostic_channels") or m.fpn_channels,
        m.class_agnostic_convs,
        map_channels=m.semantic_channels,
        dtype=dtype,
      )
    if self.has_rpn_mask:
      self.rpn_mask = rpn_lib.RPNHead(m.fpn_channels, num_anchors, dtype=dtype)
    if m.semantic_head:
      self.semantic_head = SemanticHead(m.num_semantic_classes, m.semantic_channels, dtype=dtype)
    self.box_head = BoxHead(m.num_classes, m.roi.fc_dim, dtype=dtype)

  # ----------------------------------------------------------------------------------------------
  # Shared pieces.

  def anchors(self) -> tuple[np.ndarray, ...]:
    """Per-level [H_l * W_l * A, 4] anchors of config.data.image_size."""
    a = self.config.anchor
    return anchors_for(
      tuple(self.image_size),
      tuple(a.strides),
      tuple(a.sizes),
      tuple(a.aspect_ratios),
      float(a.offset),
    )

  def _trunk(self, images: jnp.ndarray, train: bool) -> dict:
    """Backbone, FPN and the per-level heads that do not depend on the fusion."""
    if images.shape[1:3] != tuple(self.image_size):
      raise ValueError(
        f"images are {images.shape[1:3]} but config.data.image_size = {tuple(self.image_size)}; "
        "the anchors are built for the configured size."
      )
    pyramid = self.fpn(self.backbone(images, train=train))
    trunk = {
      "pyramid": pyramid,
      "det_features": self.rpn_det.features([pyramid[k] for k in LEVELS]),
    }
    prior = None
    if self.config.class_agnostic:
      mask_inputs, ca_logits, prior, map_logits = self.class_agnostic(pyramid)
      trunk["class_agnostic_logits"] = [x.astype(jnp.float32) for x in ca_logits]
      trunk["class_agnostic_map_logits"] = map_logits.astype(jnp.float32)
      if self.has_rpn_mask:
        trunk["mask_features"] = self.rpn_mask.features(mask_inputs)
    if self.config.semantic_head:
      trunk["semantic_logits"] = self.semantic_head(pyramid, prior).astype(jnp.float32)
    return trunk

  def _proposals(self, scores: dict, train: bool) -> dict:
    r = self.config.rpn
    return rpn_lib.propose(
      scores["logits"],
      scores["deltas"],
      self.anchors(),
      tuple(self.image_size),
      r.pre_nms_topk_train if train else r.pre_nms_topk_test,
      r.post_nms_topk_train if train else r.post_nms_topk_test,
      r.nms_threshold,
      r.min_size,
      tuple(r.box_weights),
    )

  def _pool(self, pyramid: dict, boxes_bxrx4: jnp.ndarray) -> jnp.ndarray:
    o = self.config.roi
    return pool_rois(
      [pyramid[k] for k in ROI_LEVELS],
      jax.lax.stop_gradient(boxes_bxrx4),
      o.canonical_size,
      o.canonical_level,
      o.pooler_resolution,
      o.sampling_ratio,
    )

  def initialize(self, images):
    """Calls every submodule once, so that init with this method creates all the variables.

    It skips what has no variables (proposals, NMS, RoIAlign, sampling) and feeds the box head
    a single zero ROI: the variables are exactly those of `__call__`, at a fraction of the
    compile time.

    Args:
      images: [B, H, W, 3] of config.data.image_size.

    Returns:
      the anchor logits of fusion 'none' (unused; init only wants the variables).
    """
    trunk = self._trunk(images, train=False)
    scores = self._scores(trunk, "none")
    side, channels = self.config.roi.pooler_resolution, self.config.fpn_channels
    self.box_head(jnp.zeros((images.shape[0], 1, side, side, channels), images.dtype))
    return scores["logits"]

  # ----------------------------------------------------------------------------------------------
  # Forward passes.

  def __call__(self, images, targets=None, train: bool = False, fusion: str | None = None):
    """Training or inference forward.

    Args:
      images: [B, H, W, 3] normalised images, (H, W) = config.data.image_size.
      targets: the batch dict (batch contract); required when train.
      train: training forward (samples anchors and ROIs; needs the 'sampling' rng).
      fusion: RPN fusion; None = config.model.fusion.train / .inference.

    Returns:
      dict; always: proposals {boxes, logits, scores, valid} [B, P(, 4)], rpn_logits [B, N]
      (the fused anchor logits that ranked the proposals), semantic_logits [B, H/4, W/4, K_sem]
      (with a semantic head), class_agnostic_logits (list of [B, H_l, W_l] for P2..P6, with the
      class-agnostic module).
      Training adds class_agnostic_map_logits [B, H/4, W/4] (with the class-agnostic module),
      rpn_det / rpn_mask {logits, deltas, positive, negative} over the N anchors
      (rpn_det: the fused predictions that make the proposals; rpn_mask: RPN_mask's own),
      rpn_targets {labels, deltas} and roi (see `sample_rois`, plus cls_logits, deltas).
      Inference adds detections {boxes, scores, classes, valid} and the outputs of
      `_segmentation_outputs`.
    """
    m = self.config
    if fusion is None:
      fusion = m.fusion.train if train else m.fusion.inference
    check_fusion(self.config, fusion, "fusion")
    if train and targets is None:
      raise ValueError("SegRPN(train=True) needs targets=batch (boxes, classes, valid).")
    trunk = self._trunk(images, train)
    if not train:
      return {**self._detect(trunk, fusion), **self._segmentation_outputs(trunk)}
    scores = self._scores(trunk, fusion)
    proposals = self._proposals(scores, train)
    out = {"proposals": proposals, "rpn_logits": scores["logits"].astype(jnp.float32)}
    for key in ("semantic_logits", "class_agnostic_logits", "class_agnostic_map_logits"):
      if key in trunk:
        out[key] = trunk[key]
    out.update(self._training_outputs(trunk, scores, proposals, targets))
    return out

  def predict_fusions(self, images, fusions: tuple[str, ...]) -> dict:
    """Inference under several RPN fusions, sharing everything that does not depend on them.

    Backbone, FPN, the segmentation heads and the RPN feature convs run once; the fused anchor
    scoring, the proposals and the box head (with post-processing) once per fusion. Call it
    as `model.apply(variables, images, fusions, method=SegRPN.predict_fusions)`.

    Args:
      images: [B, H, W, 3] normalised images, (H, W) = config.data.image_size.
      fusions: the fusions to run (see `rpn.inference_fusions`); static.

    Returns:
      {'fusions': {fusion: {'detections': ..., 'proposals': ...}}} plus the fusion-independent
      outputs of `_segmentation_outputs`; each fusion's entries are exactly those of
      `__call__(train=False, fusion=fusion)`.

    Raises:
      ValueError: a fusion is not one of rpn.FUSIONS, or is not 'none' on a model without
        RPN_mask (the baseline, or config.model.rpn_mask False: errors.ConfigError).
    """
    for fusion in fusions:
      check_fusion(self.config, fusion, "fusions")
    trunk = self._trunk(images, train=False)
    out = {}
    for fusion in fusions:
      detected = self._detect(trunk, fusion)
      out[fusion] = {k: detected[k] for k in ("detections", "proposals")}
    return {"fusions": out, **self._segmentation_outputs(trunk)}

  def _scores(self, trunk: dict, fusion: str) -> dict:
    """The anchor scores of both RPNs under `fusion` (see rpn.fused_scoring)."""
    mask_head = self.rpn_mask if self.has_rpn_mask else None
    return rpn_lib.fused_scoring(
      self.rpn_det, trunk["det_features"], fusion, mask_head, trunk.get("mask_features")
    )

  def _detect(self, trunk: dict, fusion: str) -> dict:
    """The per-fusion part of inference: anchor scoring, proposals, box head, post-processing.

    Returns:
      {proposals, rpn_logits [B, N], detections {boxes, scores, classes, valid}}.
    """
    o = self.config.roi
    scores = self._scores(trunk, fusion)
    proposals = self._proposals(scores, train=False)
    cls_logits, deltas = self.box_head(self._pool(trunk["pyramid"], proposals["boxes"]))
    detections = jax.vmap(
      functools.partial(
        postprocess,
        image_size=tuple(self.image_size),
        box_weights=tuple(o.box_weights),
        score_threshold=o.score_threshold,
        nms_threshold=o.nms_threshold,
        max_detections=o.detections_per_image,
      )
    )(cls_logits, deltas, proposals["boxes"], proposals["valid"])
    return {
      "proposals": proposals,
      "rpn_logits": scores["logits"].astype(jnp.float32),
      "detections": detections,
    }

  def _segmentation_outputs(self, trunk: dict) -> dict:
    """The fusion-independent inference outputs, at the input size where they are maps.

    Returns:
      With a semantic head: semantic_logits [B, H/4, W/4, K_sem], semantic_labels [B, H, W]
      (argmax of the bilinearly upsampled logits) and semantic_foreground_prob [B, H, W] (see
      `_semantic_foreground`). With the class-agnostic module: class_agnostic_logits (list of
      [B, H_l, W_l] for P2..P6) and class_agnostic_prob [B, H, W], the sigmoid of the stride-4
      class-agnostic map logits bilinearly upsampled to the input (as its loss upsamples them).
    """
    out = {}
    height, width = self.image_size
    if self.config.semantic_head:
      out["semantic_logits"] = trunk["semantic_logits"]
      logits = resize_bilinear(trunk["semantic_logits"], height, width)
      out["semantic_labels"] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      out["semantic_foreground_prob"] = self._semantic_foreground(jax.nn.softmax(logits, axis=-1))
    if self.config.class_agnostic:
      out["class_agnostic_logits"] = trunk["class_agnostic_logits"]
      map_logits = resize_bilinear(trunk["class_agnostic_map_logits"][..., None], height, width)
      out["class_agnostic_prob"] = jax.nn.sigmoid(map_logits[..., 0])
    return out

  def _training_outputs(self, trunk: dict, scores: dict, proposals: dict, targets: dict) -> dict:
    m = self.config
    b = trunk["det_features"][0].shape[0]
    keys = jax.vmap(lambda k: jax.random.split(k, 3))(
      jax.random.split(self.make_rng("sampling"), b)
    )  # [B, 3]: RPN_det anchors, RPN_mask anchors, ROIs
    gt_boxes = targets["boxes"].astype(jnp.float32)
    gt_valid = targets["valid"].astype(bool) & (box_ops.area(gt_boxes) > 0)
    anchors_nx4 = jnp.asarray(np.concatenate(self.anchors(), axis=0))

    def match_anchors(boxes_gx4, valid_g):
      matched, labels = matching.match(
        box_ops.iou(boxes_gx4, anchors_nx4),
        valid_g,
        thresholds=tuple(m.rpn.iou_thresholds),
        labels=(0, -1, 1),
        allow_low_quality_matches=True,
      )
      deltas = box_ops.encode(anchors_nx4, boxes_gx4[matched], tuple(m.rpn.box_weights))
      return labels, jnp.where((labels == 1)[:, None], deltas, 0.0)

    labels, target_deltas = jax.vmap(match_anchors)(gt_boxes, gt_valid)
    sample = jax.vmap(
      functools.partial(
        matching.subsample_labels,
        num_samples=m.rpn.batch_size_per_image,
        positive_fraction=m.rpn.positive_fraction,
      )
    )

    def rpn_outputs(logits, deltas, key):  # one RPN's predictions and its own anchor sample
      positive, negative = sample(labels, key=key)
      return {
        "logits": logits.astype(jnp.float32),
        "deltas": deltas.astype(jnp.float32),
        "positive": positive,
        "negative": negative,
      }

    out = {"rpn_targets": {"labels": labels, "deltas": target_deltas}}
    out["rpn_det"] = rpn_outputs(scores["logits"], scores["deltas"], keys[:, 0])
    if self.has_rpn_mask:
      out["rpn_mask"] = rpn_outputs(scores["mask_logits"], scores["mask_deltas"], keys[:, 1])

    o = m.roi
    rois = jax.vmap(
      functools.partial(
        sample_rois,
        batch_size_per_image=o.batch_size_per_image,
        positive_fraction=o.positive_fraction,
        fg_iou_threshold=o.fg_iou_threshold,
        box_weights=tuple(o.box_weights),
      )
    )(
      proposals["boxes"],
      proposals["valid"],
      gt_boxes,
      targets["classes"].astype(jnp.int32),
      gt_valid,
      keys[:, 2],
    )
    cls_logits, deltas = self.box_head(self._pool(trunk["pyramid"], rois["boxes"]))
    out["roi"] = {**rois, "cls_logits": cls_logits, "deltas": deltas}
    return out

  def _semantic_foreground(self, semantic_probs):
    """The [B, H, W] foreground probability of mIoU*: the semantic head's total probability of
    the thing classes, the last config.model.num_classes semantic classes (trainIds 11..18).

    It is the baseline's binary foreground map too (the baseline has no class-agnostic
    module); SegRPN's class-agnostic features reach it through the semantic head's objectness
    prior. The class-agnostic module's own binary map is `class_agnostic_prob`.
    """
    m = self.config
    return jnp.sum(semantic_probs[..., m.num_semantic_classes - m.num_classes :], axis=-1)

  def rpn_maps(self, images) -> dict:
    """Per-level RPN maps of both RPNs and their fusions (the paper's Fig. 1 and 3).

    Computed level by level from the feature maps (not through the flattened scoring), so it
    doubles as an independent check of `rpn.fused_scoring`.

    Args:
      images: [B, H, W, 3].

    Returns:
      {'P2': ..., ..., 'P6': ...}, per level a dict with rpn_det_features [B, H_l, W_l, C],
      rpn_det_logits and rpn_det_objectness (sigmoid) [B, H_l, W_l, A]; with RPN_mask also
      rpn_mask_features,
      rpn_mask_logits, rpn_mask_objectness, fused_features (F_det + F_det * F_mask) and
      fused_objectness {'rpn', 'roi', 'roi+rpn'} (probabilities). All float32.
    """
    trunk = self._trunk(images, train=False)
    maps = {}
    for i, name in enumerate(LEVELS):
      f_det = trunk["det_features"][i]
      det = self.rpn_det.objectness(f_det)
      level = {
        "rpn_det_features": f_det,
        "rpn_det_logits": det,
        "rpn_det_objectness": jax.nn.sigmoid(det.astype(jnp.float32)),
      }
      if self.has_rpn_mask:
        f_mask = trunk["mask_features"][i]
        mask = self.rpn_mask.objectness(f_mask)
        fused_features = f_det + f_det * f_mask
        rpn_fused = self.rpn_det.objectness(fused_features)
        level.update(
          rpn_mask_features=f_mask,
          rpn_mask_logits=mask,
          rpn_mask_objectness=jax.nn.sigmoid(mask.astype(jnp.float32)),
          fused_features=fused_features,
          fused_objectness={
            "rpn": jax.nn.sigmoid(rpn_fused.astype(jnp.float32)),
            "roi": jax.nn.sigmoid((det + mask).astype(jnp.float32)),
            "roi+rpn": jax.nn.sigmoid((rpn_fused + mask).astype(jnp.float32)),
          },
        )
      maps[name] = jax.tree.map(lambda x: x.astype(jnp.float32), level)
    return maps

  def proposal_filtering(self, images, fusion: str) -> dict:
    """Every anchor's proposal before filtering, and the proposals training keeps (Fig. 3b).

    Call it as `model.apply(variables, images, fusion, method=SegRPN.proposal_filtering)`.

    Args:
      images: [B, H, W, 3].
      fusion: the fusion of the anchor scoring (static).

    Returns:
      dict, float32 unless stated:
        decoded_boxes [B, N, 4]: every anchor's box decoded with the fused deltas and clipped
          to the image, as proposal generation decodes, but before its per-level top-k, size
          filter and NMS; in the order of the concatenated anchors (level, y, x, anchor);
        logits [B, N] and deltas [B, N, 4]: the fused anchor scores that rank and decode them;
        proposals: what `__call__(train=True)` proposes from them, with the training counts
          (config.model.rpn pre_nms_topk_train per level, post_nms_topk_train per image), as
          `rpn.propose` returns it (boxes, logits, scores, valid, levels, anchor_indices).
    """
    check_fusion(self.config, fusion, "fusion")
    trunk = self._trunk(images, train=False)
    scores = self._scores(trunk, fusion)
    logits = scores["logits"].astype(jnp.float32)
    deltas = scores["deltas"].astype(jnp.float32)
    anchors_nx4 = jnp.asarray(np.concatenate(self.anchors(), axis=0))
    decoded = box_ops.decode(anchors_nx4[None], deltas, tuple(self.config.rpn.box_weights))
    height, width = self.image_size
    return {
      "decoded_boxes": box_ops.clip(decoded, height, width),
      "logits": logits,
      "deltas": deltas,
      "proposals": self._proposals(scores, train=True),
    }
