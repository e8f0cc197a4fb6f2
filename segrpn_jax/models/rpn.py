"""The RPN head shared across FPN levels, and SegRPN's fused anchor scoring of RPN_det and RPN_mask.

One `RPNHead` (detectron2's StandardRPNHead) runs on every level: a 3x3 conv + ReLU gives the
"RPN feature map" F, and two 1x1 convs give A objectness logits and 4A box deltas per position.
SegRPN has two instances: RPN_det on P2..P6 and RPN_mask on the class-agnostic features.

Fused anchor scoring: the 3x3 conv must run per level (the maps differ in size), but everything
after it is position-wise, so every level's [B, H_l, W_l, C] map is flattened and concatenated to
[B, sum_l H_l W_l, C], and the 1x1 convs (as one Dense) and the fusions run once on the
concatenation for all levels and images. The per-level pre-NMS top-k
(ops.proposals.select_topk_per_level, inside generate_proposals) then reads static slices of the
fused [B, N] logits, vmapped over images, and only the selected anchors are decoded. The
flattened order is level-major, then (y, x, anchor): exactly the order of the concatenated
`ops.anchors.generate_anchors` arrays.

The fusions (docs/architecture.md, "The two fusions"):
  rpn:     F_det <- F_det + F_det * F_mask, before RPN_det's 1x1 convs (feature fusion);
  roi:     logit <- logit_det + logit_mask, before the sigmoid (probability-map fusion);
  roi+rpn: both; the roi sum then uses RPN_det's logits computed on the fused features.
The box deltas that decode the proposals are always RPN_det's (on fused features under rpn).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segrpn_jax.models.layers import Conv
from segrpn_jax.ops import proposals as proposals_ops

FUSIONS = ("none", "rpn", "roi", "roi+rpn")

# detectron2 StandardRPNHead: every conv ~ N(0, 0.01^2), bias 0.
_RPN_INIT = nn.initializers.normal(stddev=0.01)


def check_fusion(fusion: str, where: str, has_mask: bool = True) -> str:
  """Returns `fusion` if it is one of FUSIONS, else raises naming `where` it came from.

  Args:
    fusion: the requested fusion.
    where: the config key or argument that carried it, for the error message.
    has_mask: whether the model has RPN_mask (config.model.class_agnostic); without it only
      'none' is possible.

  Returns:
    `fusion` unchanged.
  """
  if fusion not in FUSIONS:
    raise ValueError(f"{where} = {fusion!r} is not a fusion; use one of {FUSIONS}.")
  if not has_mask and fusion != "none":
    raise ValueError(
      f"fusion {fusion!r} needs RPN_mask, but config.model.class_agnostic is False; "
      "use fusion 'none' for the baseline."
    )
  return fusion


def inference_fusions(train_fusion: str) -> tuple[str, ...]:
  """The inference fusions a model trained with `train_fusion` is evaluated under.

  The trained fusion first, then each of its parts switched on alone and finally 'none' (the
  paper's "w/o ... during inference" rows): a part that was not trained is not evaluated.

  Args:
    train_fusion: one of FUSIONS.

  Returns:
    roi+rpn -> (roi+rpn, roi, rpn, none); roi -> (roi, none); rpn -> (rpn, none);
    none -> (none,).
  """
  check_fusion(train_fusion, "train_fusion")
  parts = {"roi+rpn": ("roi", "rpn")}.get(train_fusion, ())
  return tuple(dict.fromkeys((train_fusion, *parts, "none")))


class RPNHead(nn.Module):
  """RPN head shared across levels (detectron2 StandardRPNHead).

  Attributes:
    channels: width of the 3x3 conv (the RPN feature map F).
    num_anchors: A, anchors per position (one size per level x aspect ratios).
    dtype: compute dtype; parameters stay float32.
  """

  channels: int
  num_anchors: int = 3
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.conv = Conv(
      self.channels,
      (3, 3),
      padding="SAME",
      kernel_init=_RPN_INIT,
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
      name="conv",
    )
    # The 1x1 convs as Dense layers: they run once on all levels' flattened positions.
    self.objectness = nn.Dense(
      self.num_anchors, kernel_init=_RPN_INIT, dtype=self.dtype, name="objectness"
    )
    self.deltas = nn.Dense(
      4 * self.num_anchors, kernel_init=_RPN_INIT, dtype=self.dtype, name="deltas"
    )

  def features(self, levels: Sequence[jnp.ndarray]) -> list[jnp.ndarray]:
    """The RPN feature maps F of every level: ReLU(conv3x3(x)).

    Args:
      levels: [B, H_l, W_l, C_in] input maps.

    Returns:
      list of [B, H_l, W_l, channels].
    """
    return [nn.relu(self.conv(x)) for x in levels]

  def predict(self, features_bxnxc: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The 1x1 convs on flattened positions.

    Args:
      features_bxnxc: [B, N, C] RPN features of N positions (all levels, flattened).

    Returns:
      (logits [B, N * A], deltas [B, N * A, 4]) in (position, anchor) order, deltas as
      (dx, dy, dw, dh) like detectron2's (N, A, 4, H, W) view of its 4A channels.
    """
    b, n, _ = features_bxnxc.shape
    logits = self.objectness(features_bxnxc).reshape(b, n * self.num_anchors)
    deltas = self.deltas(features_bxnxc).reshape(b, n * self.num_anchors, 4)
    return logits, deltas


def flatten_levels(maps: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Concatenates [B, H_l, W_l, C] maps into [B, sum_l H_l W_l, C] (level-major, then y, x).

  Args:
    maps: one [B, H_l, W_l, C] map per level.

  Returns:
    [B, sum_l H_l W_l, C].
  """
  return jnp.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps], axis=1)


def split_levels(flat: jnp.ndarray, sizes: Sequence[int]) -> list[jnp.ndarray]:
  """Splits axis 1 of a level-concatenated array back into per-level pieces.

  Args:
    flat: [B, sum(sizes), ...].
    sizes: static per-level lengths.

  Returns:
    list of [B, sizes[l], ...].
  """
  return jnp.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=1)


def fused_scoring(
  det_head: RPNHead,
  det_features: Sequence[jnp.ndarray],
  fusion: str,
  mask_head: RPNHead | None = None,
  mask_features: Sequence[jnp.ndarray] | None = None,
) -> dict:
  """Objectness and deltas of all anchors of all levels under `fusion`, in one batched pass.

  Args:
    det_head: the bound RPN_det head.
    det_features: RPN_det's feature maps F_det per level, [B, H_l, W_l, C].
    fusion: one of FUSIONS; anything but 'none' needs the mask head and features.
    mask_head: the bound RPN_mask head (None for the baseline).
    mask_features: RPN_mask's feature maps F_mask per level, [B, H_l, W_l, C].

  Returns:
    dict with
      logits [B, N]: the objectness logits that rank the proposals (fused per `fusion`);
      deltas [B, N, 4]: RPN_det's deltas that decode them (on fused features under rpn);
      det_logits, det_deltas: RPN_det on its own features F_det (no fusion);
      and, with a mask head, mask_logits, mask_deltas: RPN_mask's own predictions.
    N = sum_l H_l W_l A, ordered like the concatenated anchors.
  """
  check_fusion(fusion, "fusion", has_mask=mask_head is not None)
  f_det = flatten_levels(det_features)
  det_logits, det_deltas = det_head.predict(f_det)
  out = {"det_logits": det_logits, "det_deltas": det_deltas}
  if mask_head is None:
    out.update(logits=det_logits, deltas=det_deltas)
    return out
  f_mask = flatten_levels(mask_features)
  mask_logits, mask_deltas = mask_head.predict(f_mask)
  out.update(mask_logits=mask_logits, mask_deltas=mask_deltas)
  logits, deltas = det_logits, det_deltas
  if fusion in ("rpn", "roi+rpn"):
    logits, deltas = det_head.predict(f_det + f_det * f_mask)  # feature fusion
  if fusion in ("roi", "roi+rpn"):
    logits = logits + mask_logits  # probability-map fusion: sum of logits before the sigmoid
  out.update(logits=logits, deltas=deltas)
  return out


def propose(
  logits_bxn: jnp.ndarray,
  deltas_bxnx4: jnp.ndarray,
  anchors_by_level: Sequence[np.ndarray],
  image_size: tuple[int, int],
  pre_nms_topk: int,
  post_nms_topk: int,
  nms_threshold: float,
  min_size: float,
  box_weights: Sequence[float],
  first_level: int = 2,
) -> dict:
  """Proposals of a batch from flattened anchor scores (detectron2 find_top_rpn_proposals).

  Args:
    logits_bxn: [B, N] objectness logits (already fused), N = total anchors.
    deltas_bxnx4: [B, N, 4] deltas.
    anchors_by_level: per level [N_l, 4] anchors (host constants), sum N_l = N.
    image_size: (height, width) for clipping.
    pre_nms_topk: anchors kept per level before NMS.
    post_nms_topk: proposals kept per image.
    nms_threshold: NMS IoU threshold.
    min_size: boxes with a side below this are masked out.
    box_weights: RPN Box2BoxTransform weights.
    first_level: the FPN level of anchors_by_level[0] (P2 in SegRPN).

  Returns:
    dict boxes [B, P, 4], logits [B, P], scores [B, P] (sigmoid), valid [B, P], and where each
    proposal came from: levels [B, P] int32 (its FPN level, first_level.., -1 on padding) and
    anchor_indices [B, P] int32 (its anchor's index into the concatenated anchors, the order of
    logits_bxn; -1 on padding). P = post_nms_topk, sorted by logit descending.
  """
  sizes = [a.shape[0] for a in anchors_by_level]
  if sum(sizes) != logits_bxn.shape[1]:
    raise ValueError(
      f"{logits_bxn.shape[1]} anchor scores but {sum(sizes)} anchors: the feature maps do not "
      f"match config.data.image_size = {tuple(image_size)}."
    )
  logits_by_level = split_levels(logits_bxn.astype(jnp.float32), sizes)
  deltas_by_level = split_levels(deltas_bxnx4.astype(jnp.float32), sizes)
  anchors = [jnp.asarray(a) for a in anchors_by_level]

  def one_image(logits_l, deltas_l):
    return proposals_ops.generate_proposals(
      logits_l,
      deltas_l,
      anchors,
      tuple(image_size),
      pre_nms_topk,
      post_nms_topk,
      nms_threshold,
      min_size=min_size,
      box_weights=tuple(box_weights),
    )

  out = jax.vmap(one_image)(logits_by_level, deltas_by_level)
  return {
    "boxes": out.boxes,
    "logits": out.logits,
    "scores": jax.nn.sigmoid(out.logits),
    "valid": out.valid,
    "levels": jnp.where(out.valid, out.levels + first_level, -1),
    "anchor_indices": out.anchor_indices,
  }
