"""Scale awareness: which FPN levels an instance belongs to, and per-level class-agnostic targets.

SegRPN assigns every ground-truth instance to FPN level(s) by the side of its box,
sqrt(a) with a the box area in input pixels, and the class-agnostic (foreground /
background) target of level L holds only the instances assigned to L. The thresholds
are the paper's, for a 512x1024 input (docs/architecture.md):

| case  | L=6            | L=5        | L=4        | L=3        | L=2  |
|-------|----------------|------------|------------|------------|------|
| none  | every instance on every level                            |
| case1 | >=256          | [128,256)  | [64,128)   | [32,64)    | <32  |  eq. (3)
| case2 | >=448          | >=448      | [224,448)  | [112,224)  | <112 |  eq. (4)
| case3 | >=384          | [192,384)  | [96,192)   | [48,96)    | <48  |  eq. (5)
"""

import math
from collections.abc import Sequence

import jax.numpy as jnp

MIN_LEVEL = 2
MAX_LEVEL = 6
NUM_LEVELS = MAX_LEVEL - MIN_LEVEL + 1

# Per case, the [low, high) range of box sides for levels 2..6 at 512x1024 input.
_INF = math.inf
_SIDE_RANGES = {
  # eq. (3): one octave per level, 32 px on L2 up to 256 px and beyond on L6.
  "case1": ((0.0, 32.0), (32.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, _INF)),
  # eq. (4): the largest objects (>= 448 px) go to both L5 and L6.
  "case2": ((0.0, 112.0), (112.0, 224.0), (224.0, 448.0), (448.0, _INF), (448.0, _INF)),
  # eq. (5): case1 shifted up by half an octave (x1.5).
  "case3": ((0.0, 48.0), (48.0, 96.0), (96.0, 192.0), (192.0, 384.0), (384.0, _INF)),
  # Table I "none": no scale assignment, every instance on every level.
  "none": ((0.0, _INF),) * NUM_LEVELS,
}
CASES = tuple(_SIDE_RANGES)


def level_membership(boxes_nx4, case: str, size_scale: float = 1.0, valid=None):
  """Assigns boxes to FPN levels 2..6 by the side of their box (eqs. (3), (4), (5)).

  Args:
    boxes_nx4: [N, 4] float boxes [x1, y1, x2, y2] in input pixels.
    case: 'none', 'case1', 'case2' or 'case3' (the table in this module's docstring).
    size_scale: multiplies every threshold; the paper's thresholds are for 512x1024 input,
      so an input of 256x512 uses 0.5.
    valid: optional [N] bool; invalid (padding) boxes belong to no level.

  Returns:
    [N, 5] bool, column j is level 2 + j: True where the box belongs to that level. A side s
    belongs to a level with range [low, high) when low * size_scale <= s < high * size_scale.

  Raises:
    ValueError: for an unknown case or a non-positive size_scale.
  """
  if case not in _SIDE_RANGES:
    raise ValueError(
      f"scale.level_membership: unknown case {case!r}; expected one of {CASES} "
      "(config.model.scale_case)."
    )
  if not size_scale > 0:
    raise ValueError(
      f"scale.level_membership: size_scale must be > 0, got {size_scale!r} "
      "(config.model.size_scale)."
    )
  boxes_nx4 = jnp.asarray(boxes_nx4, jnp.float32)
  widths = jnp.maximum(boxes_nx4[:, 2] - boxes_nx4[:, 0], 0.0)
  heights = jnp.maximum(boxes_nx4[:, 3] - boxes_nx4[:, 1], 0.0)
  side_n = jnp.sqrt(widths * heights)
  ranges = _SIDE_RANGES[case]
  low_5 = jnp.asarray([r[0] * size_scale for r in ranges], jnp.float32)
  high_5 = jnp.asarray([r[1] * size_scale for r in ranges], jnp.float32)
  member_nx5 = (side_n[:, None] >= low_5) & (side_n[:, None] < high_5)
  if valid is not None:
    member_nx5 &= jnp.asarray(valid, bool)[:, None]
  return member_nx5


def _any_pool(mask_hxwxc, factor: int):
  """Max (logical or) pooling with a factor x factor window and stride; pads with False."""
  height, width = mask_hxwxc.shape[:2]
  out_h, out_w = -(-height // factor), -(-width // factor)
  padded = jnp.pad(mask_hxwxc, ((0, out_h * factor - height), (0, out_w * factor - width), (0, 0)))
  blocks = padded.reshape(out_h, factor, out_w, factor, -1)
  return blocks.any(axis=(1, 3))


def class_agnostic_targets(
  instance_map_hxw,
  boxes_nx4,
  membership_nx5,
  valid_n,
  crowd_hxw,
  strides: Sequence[int] = (4, 8, 16, 32, 64),
):
  """Builds the per-level class-agnostic (foreground/background) targets of levels 2..6.

  How a pixel map is brought to stride s: cell (i, j) of level l covers the input pixels
  [i*s, (i+1)*s) x [j*s, (j+1)*s) (the image is padded with background at the bottom and
  right up to a multiple of s, so H_l = ceil(H / s)). The cell is foreground (target 1) if
  ANY pixel of an instance that belongs to level l falls in its window, i.e. max pooling
  with an s x s window and stride s. It is ignored (weight 0) if any crowd pixel falls in
  the window and it is not foreground; all other cells are background with weight 1.

  Why max pooling rather than nearest sampling or a majority vote: scale assignment puts
  the smallest instances (a few pixels wide on L2) and thin ones (poles of bicycles,
  pedestrians seen side-on) on levels whose stride exceeds their width; nearest sampling or
  a 50% vote would erase them from their own level and teach RPN_mask that they are
  background, while max pooling keeps every member instance at the price of dilating its
  mask by less than one cell, a small error for a coarse objectness prior whose cells are
  also the anchor positions. Using the same any-pixel rule for crowd keeps the two
  consistent: a cell touched by a crowd region is never a confident negative. Any-pooling
  composes exactly (ceil(ceil(H/a)/b) = ceil(H/(ab)) and the windows nest), so the levels
  are computed from one another when the strides are successive multiples.

  Args:
    instance_map_hxw: [H, W] int; 0 = no instance, k >= 1 = the instance of boxes_nx4[k-1].
      Values above N are not allowed.
    boxes_nx4: [N, 4] boxes of the instances (only their count is used here; membership
      already encodes their sizes).
    membership_nx5: [N, 5] bool from `level_membership`, columns for levels 2..6.
    valid_n: [N] bool; invalid (padding) instances are foreground on no level.
    crowd_hxw: [H, W] bool, True on crowd/group regions (ignored, never foreground).
    strides: the stride of each level 2..6.

  Returns:
    (targets, weights): two lists with one float32 [H_l, W_l] array per level 2..6,
    H_l = ceil(H / stride_l), W_l = ceil(W / stride_l). targets in {0, 1}; weights in {0, 1}
    with 0 = ignore.

  Raises:
    ValueError: on mismatched shapes or strides.
  """
  instance_map_hxw = jnp.asarray(instance_map_hxw)
  crowd_hxw = jnp.asarray(crowd_hxw, bool)
  membership_nx5 = jnp.asarray(membership_nx5, bool)
  num_instances = boxes_nx4.shape[0]
  if instance_map_hxw.ndim != 2 or crowd_hxw.shape != instance_map_hxw.shape:
    raise ValueError(
      "scale.class_agnostic_targets: instance_map_hxw and crowd_hxw must be the same [H, W], "
      f"got {instance_map_hxw.shape} and {crowd_hxw.shape}."
    )
  if membership_nx5.shape != (num_instances, NUM_LEVELS) or valid_n.shape != (num_instances,):
    raise ValueError(
      "scale.class_agnostic_targets: membership_nx5 must be "
      f"[{num_instances}, {NUM_LEVELS}] and valid_n [{num_instances}] to match boxes_nx4, got "
      f"{membership_nx5.shape} and {valid_n.shape}."
    )
  if len(strides) != NUM_LEVELS or any(s < 1 for s in strides):
    raise ValueError(
      f"scale.class_agnostic_targets: strides must be {NUM_LEVELS} positive ints for levels "
      f"2..6, got {tuple(strides)}."
    )

  # Row k of the table says on which levels instance id k is foreground; id 0 is background.
  member_table = membership_nx5 & jnp.asarray(valid_n, bool)[:, None]
  member_table = jnp.concatenate([jnp.zeros((1, NUM_LEVELS), bool), member_table], axis=0)
  foreground_hxwx5 = member_table[instance_map_hxw]
  # Channel 5 carries the crowd map through the same pooling.
  pixels = jnp.concatenate([foreground_hxwx5, crowd_hxw[..., None]], axis=-1)

  targets, weights = [], []
  current, current_stride = pixels, 1
  for level_index, stride in enumerate(strides):
    if stride % current_stride == 0:
      current = _any_pool(current, stride // current_stride)
    else:  # strides that do not nest: pool from the pixels directly.
      current = _any_pool(pixels, stride)
    current_stride = stride
    foreground = current[..., level_index]
    ignore = current[..., NUM_LEVELS] & ~foreground
    targets.append(foreground.astype(jnp.float32))
    weights.append((~ignore).astype(jnp.float32))
  return targets, weights
