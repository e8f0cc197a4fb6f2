"""Box arithmetic in detectron2's convention: [x1, y1, x2, y2], continuous pixels, no +1.

`encode`/`decode` are detectron2's Box2BoxTransform (get_deltas / apply_deltas) and `fpn_level`
is the FPN paper's eq. (1) level rule as detectron2's ROIPooler applies it. Everything is pure
jnp on trailing-axis boxes, so it jits and vmaps over any leading axes.
"""

import math
from collections.abc import Sequence

import jax.numpy as jnp

# detectron2's default dw/dh clamp: no box may grow by more than 1000/16 in one step.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def area(boxes_nx4: jnp.ndarray) -> jnp.ndarray:
  """Areas of boxes.

  Args:
    boxes_nx4: [..., 4] boxes [x1, y1, x2, y2].

  Returns:
    [...] areas (x2 - x1) * (y2 - y1); degenerate boxes give 0 or a negative number as
    computed, like detectron2's Boxes.area.
  """
  return (boxes_nx4[..., 2] - boxes_nx4[..., 0]) * (boxes_nx4[..., 3] - boxes_nx4[..., 1])


def iou(a_nx4: jnp.ndarray, b_mx4: jnp.ndarray) -> jnp.ndarray:
  """Pairwise intersection over union.

  The arithmetic order matches torchvision's NMS kernel (inter / (area_a + area_b - inter)) so
  thresholding this matrix reproduces torchvision's suppression decisions bit for bit.

  Args:
    a_nx4: [N, 4] boxes.
    b_mx4: [M, 4] boxes.

  Returns:
    [N, M] IoU; 0 where the union is 0 (e.g. two zero-size padding boxes).
  """
  area_a = area(a_nx4)
  area_b = area(b_mx4)
  lt_x = jnp.maximum(a_nx4[:, None, 0], b_mx4[None, :, 0])
  lt_y = jnp.maximum(a_nx4[:, None, 1], b_mx4[None, :, 1])
  rb_x = jnp.minimum(a_nx4[:, None, 2], b_mx4[None, :, 2])
  rb_y = jnp.minimum(a_nx4[:, None, 3], b_mx4[None, :, 3])
  inter = jnp.maximum(rb_x - lt_x, 0.0) * jnp.maximum(rb_y - lt_y, 0.0)
  union = area_a[:, None] + area_b[None, :] - inter
  safe_union = jnp.where(union > 0, union, 1.0)
  return jnp.where(union > 0, inter / safe_union, 0.0)


def _centres_and_sizes(boxes: jnp.ndarray):
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  ctr_x = boxes[..., 0] + 0.5 * widths
  ctr_y = boxes[..., 1] + 0.5 * heights
  return ctr_x, ctr_y, widths, heights


def encode(
  src_nx4: jnp.ndarray,
  dst_nx4: jnp.ndarray,
  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> jnp.ndarray:
  """Deltas that take `src` boxes to `dst` boxes (detectron2 Box2BoxTransform.get_deltas).

  dx = wx * (dst_cx - src_cx) / src_w, dy likewise, dw = ww * log(dst_w / src_w), dh likewise.

  Args:
    src_nx4: [..., 4] source boxes (anchors or proposals) with positive width and height.
    dst_nx4: [..., 4] target boxes, same shape.
    weights: (wx, wy, ww, wh) scaling of the four deltas.

  Returns:
    [..., 4] deltas (dx, dy, dw, dh).
  """
  wx, wy, ww, wh = weights
  src_cx, src_cy, src_w, src_h = _centres_and_sizes(src_nx4)
  dst_cx, dst_cy, dst_w, dst_h = _centres_and_sizes(dst_nx4)
  dx = wx * (dst_cx - src_cx) / src_w
  dy = wy * (dst_cy - src_cy) / src_h
  dw = ww * jnp.log(dst_w / src_w)
  dh = wh * jnp.log(dst_h / src_h)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode(
  src_nx4: jnp.ndarray,
  deltas_nx4: jnp.ndarray,
  weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
  scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> jnp.ndarray:
  """Applies deltas to boxes (detectron2 Box2BoxTransform.apply_deltas).

  Args:
    src_nx4: [..., 4] source boxes.
    deltas_nx4: [..., 4] deltas (dx, dy, dw, dh) as produced by `encode`.
    weights: (wx, wy, ww, wh) the deltas were scaled by.
    scale_clamp: upper bound on dw and dh after unweighting, so exp() cannot overflow.

  Returns:
    [..., 4] decoded boxes.
  """
  wx, wy, ww, wh = weights
  src_cx, src_cy, src_w, src_h = _centres_and_sizes(src_nx4.astype(deltas_nx4.dtype))
  dx = deltas_nx4[..., 0] / wx
  dy = deltas_nx4[..., 1] / wy
  dw = jnp.minimum(deltas_nx4[..., 2] / ww, scale_clamp)
  dh = jnp.minimum(deltas_nx4[..., 3] / wh, scale_clamp)
  ctr_x = dx * src_w + src_cx
  ctr_y = dy * src_h + src_cy
  w = jnp.exp(dw) * src_w
  h = jnp.exp(dh) * src_h
  return jnp.stack([ctr_x - 0.5 * w, ctr_y - 0.5 * h, ctr_x + 0.5 * w, ctr_y + 0.5 * h], axis=-1)


def clip(boxes_nx4: jnp.ndarray, height, width) -> jnp.ndarray:
  """Clips boxes to the image [0, width] x [0, height] (detectron2 Boxes.clip).

  Args:
    boxes_nx4: [..., 4] boxes.
    height: image height in pixels (Python number or scalar array).
    width: image width in pixels.

  Returns:
    [..., 4] clipped boxes.
  """
  x1 = jnp.clip(boxes_nx4[..., 0], 0, width)
  y1 = jnp.clip(boxes_nx4[..., 1], 0, height)
  x2 = jnp.clip(boxes_nx4[..., 2], 0, width)
  y2 = jnp.clip(boxes_nx4[..., 3], 0, height)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def fpn_level(
  boxes_nx4: jnp.ndarray,
  canonical_size: float = 224,
  canonical_level: int = 4,
  min_level: int = 2,
  max_level: int = 5,
) -> jnp.ndarray:
  """FPN level of each ROI: k = floor(k0 + log2(sqrt(wh) / canonical)), FPN paper eq. (1).

  Like detectron2's assign_boxes_to_levels, a 1e-8 is added inside the log2 so that a box of
  exactly canonical * 2**j lands on level k0 + j despite rounding, and zero-size boxes get
  min_level instead of -inf.

  Args:
    boxes_nx4: [..., 4] boxes in input pixels.
    canonical_size: box side mapped to canonical_level (224 for ImageNet-sized boxes).
    canonical_level: k0.
    min_level: smallest level returned.
    max_level: largest level returned.

  Returns:
    [...] int32 levels in [min_level, max_level].
  """
  sides = jnp.sqrt(jnp.maximum(area(boxes_nx4), 0.0))
  levels = jnp.floor(canonical_level + jnp.log2(sides / canonical_size + 1e-8))
  return jnp.clip(levels, min_level, max_level).astype(jnp.int32)
