"""Anchor boxes for every FPN level, as detectron2's DefaultAnchorGenerator lays them out.

Anchors are host-side NumPy constants: they depend only on the static image size, so inside
jit they are baked in rather than recomputed every step.
"""

import math
from collections.abc import Sequence

import numpy as np


def cell_anchors(size: float, aspect_ratios: Sequence[float]) -> np.ndarray:
  """Anchors of one size centred at the origin, one per aspect ratio.

  An aspect ratio is h / w and keeps the area size**2: w = sqrt(size**2 / ratio), h = ratio * w.

  Args:
    size: anchor side for ratio 1, in input pixels.
    aspect_ratios: the h / w ratios.

  Returns:
    float32 [A, 4] boxes [-w/2, -h/2, w/2, h/2].
  """
  out = []
  for ratio in aspect_ratios:
    w = math.sqrt(size**2 / ratio)
    h = ratio * w
    out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
  # Computed in double, then stored in float32 like detectron2's buffer.
  return np.asarray(out, dtype=np.float64).astype(np.float32)


def feature_size(length: int, stride: int) -> int:
  """Side of a 'SAME'-padded stride-`stride` feature map over `length` input pixels."""
  return -(-length // stride)


def generate_anchors(
  height: int,
  width: int,
  strides: Sequence[int] = (4, 8, 16, 32, 64),
  sizes: Sequence[float] = (32, 64, 128, 256, 512),
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
  offset: float = 0.0,
) -> list[np.ndarray]:
  """Anchors of every level, flattened in (y, x, anchor) order.

  Level l has feature map H_l x W_l with H_l = ceil(height / stride_l); the anchors of cell
  (y, x) are the cell anchors of size sizes[l] shifted to (x * stride + offset * stride,
  y * stride + offset * stride), and anchor index a varies fastest. Coordinates are float32
  sums of float32 shifts and cell anchors, with no rounding, as in detectron2.

  Args:
    height: input image height in pixels.
    width: input image width in pixels.
    strides: stride of each level (P2..P6 by default).
    sizes: one anchor size per level.
    aspect_ratios: h / w ratios, shared by all levels.
    offset: anchor centre offset in units of the stride, in [0, 1).

  Returns:
    list of float32 [H_l * W_l * A, 4] arrays, one per level.

  Raises:
    ValueError: on mismatched strides/sizes or an out-of-range offset or image size.
  """
  if len(strides) != len(sizes):
    raise ValueError(
      f"generate_anchors: one anchor size per level is needed, got strides={tuple(strides)} "
      f"and sizes={tuple(sizes)}; set config.model.anchor.sizes to {len(strides)} values."
    )
  if not 0.0 <= offset < 1.0:
    raise ValueError(f"generate_anchors: offset must be in [0, 1), got {offset}.")
  if height <= 0 or width <= 0:
    raise ValueError(f"generate_anchors: image size must be positive, got {height}x{width}.")
  anchors = []
  for stride, size in zip(strides, sizes, strict=True):
    grid_h, grid_w = feature_size(height, stride), feature_size(width, stride)
    shift_x = (np.arange(grid_w, dtype=np.float32) * stride + offset * stride).astype(np.float32)
    shift_y = (np.arange(grid_h, dtype=np.float32) * stride + offset * stride).astype(np.float32)
    shift_y, shift_x = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
    level = shifts + cell_anchors(size, aspect_ratios)[None, :, :]
    anchors.append(level.reshape(-1, 4).astype(np.float32))
  return anchors
