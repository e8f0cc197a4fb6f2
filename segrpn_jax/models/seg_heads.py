"""Segmentation heads: the Panoptic-FPN semantic head and the multi-scale class-agnostic module.

Wiring (all maps NHWC; P_l has stride 2**l; "up" = bilinear 2x, half-pixel centres, resized to the
exact size of the next finer map so that sizes not divisible by 64 still line up):

  Semantic head (Panoptic FPN, Kirillov et al. 2019), S = config.model.semantic_channels:
    P2 -> conv3x3-GN-ReLU                                   -> s2   (stride 4)
    P3 -> conv3x3-GN-ReLU -> up                             -> s3
    P4 -> (conv3x3-GN-ReLU -> up) x 2                       -> s4
    P5 -> (conv3x3-GN-ReLU -> up) x 3                       -> s5
    z  = s2 + s3 + s4 + s5 (+ prior, below)
    semantic logits = conv1x1(z) -> [B, H/4, W/4, 19]; labels: bilinear 4x to the input, argmax.

  Class-agnostic module, one stack of its own per level l = 2..6 (the levels see different
  object scales, so their weights are not shared), K = config.model.class_agnostic_convs,
  C = config.model.class_agnostic_channels (None: the FPN's width):
    P_l -> (conv3x3-GN-ReLU) x K -> M_l [B, H_l, W_l, C]    (input of RPN_mask on level l;
                                                              without RPN_mask, of the two below)
    M_l -> conv1x1 -> level logit map [B, H_l, W_l]          (loss class_agnostic: BCE against
                                                              the scale-specific targets of l)
    M_l -> conv1x1 to S -> bilinear resize to stride 4       -> q_l   ("P<l>_prior")
    q   = q_2 + ... + q_6                                    [B, H/4, W/4, S]
    q   -> prior of the semantic head: added to z before the semantic 1x1 (the paper's "scale
           specific objectness prior"); only with a semantic head
    q   -> conv3x3-GN-ReLU -> conv1x1 -> class-agnostic map logits [B, H/4, W/4]
           ("map_conv", "map_logit"; loss class_agnostic_map: BCE of the logits bilinearly
           upsampled to the input against the full-resolution foreground; at inference
           class_agnostic_prob = sigmoid(logits bilinearly upsampled to the input))
  The level maps are coarse (level l only resolves to its stride 2**l and only holds its own
  scale's instances); the stride-4 map sees every level's features and is trained on every
  instance at full resolution, so it is the sharp binary map. The projections q_l exist with or
  without a semantic head.

GroupNorm uses gcd(32, width) groups (32 for the paper's widths, fewer for tiny test models).
"""

import math
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from segrpn_jax.models.fpn import LEVELS, ROI_LEVELS
from segrpn_jax.models.layers import Conv, GroupNorm
from segrpn_jax.ops.resize import resize_bilinear

# detectron2 c2_msra_fill: He-normal with fan_out, as used by its SemSegFPNHead convs.
_MSRA = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def num_groups(width: int) -> int:
  """GroupNorm groups for a conv width: 32 when it divides the width, else the largest divisor."""
  return math.gcd(32, width)


class ConvGNReLU(nn.Module):
  """3x3 conv (no bias) -> GroupNorm -> ReLU.

  Attributes:
    features: output width.
    dtype: compute dtype.
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(
      self.features, (3, 3), padding="SAME", use_bias=False, kernel_init=_MSRA, dtype=self.dtype
    )(x)
    x = GroupNorm(num_groups=num_groups(self.features), dtype=self.dtype)(x)
    return nn.relu(x)


class SemanticHead(nn.Module):
  """Panoptic-FPN semantic head (see the module docstring for the wiring).

  Attributes:
    num_classes: semantic classes (19 Cityscapes trainIds).
    channels: conv width S.
    dtype: compute dtype.
  """

  num_classes: int
  channels: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self, pyramid: Mapping[str, jnp.ndarray], prior_bxhxwxs: jnp.ndarray | None = None
  ) -> jnp.ndarray:
    """Semantic logits at stride 4.

    Args:
      pyramid: FPN maps with keys P2..P5, [B, H_l, W_l, C].
      prior_bxhxwxs: optional [B, H/4, W/4, S] objectness prior added before the classifier.

    Returns:
      [B, H/4, W/4, num_classes] logits (stride of P2).
    """
    total = None
    for i, name in enumerate(ROI_LEVELS):  # P2..P5
      x = pyramid[name]
      for j in range(max(1, i)):
        x = ConvGNReLU(self.channels, dtype=self.dtype, name=f"{name}_conv{j}")(x)
        if i > 0:
          finer = pyramid[ROI_LEVELS[i - j - 1]]
          x = resize_bilinear(x, finer.shape[1], finer.shape[2])
      total = x if total is None else total + x
    if prior_bxhxwxs is not None:
      total = total + prior_bxhxwxs
    return Conv(self.num_classes, (1, 1), kernel_init=_MSRA, dtype=self.dtype, name="predictor")(
      total
    )


class ClassAgnosticModule(nn.Module):
  """Multi-scale class-agnostic (foreground/background) module, one conv stack per level.

  Attributes:
    channels: width of the per-level features M_l (the input of RPN_mask, when it is built).
    num_convs: conv3x3-GN-ReLU layers per level.
    map_channels: width S of the stride-4 sum q (the semantic head's prior and the input of the
      class-agnostic map predictor).
    dtype: compute dtype.
  """

  channels: int = 256
  num_convs: int = 2
  map_channels: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pyramid: Mapping[str, jnp.ndarray]):
    """Per-level features and logits, the stride-4 sum q and the stride-4 map logits.

    Args:
      pyramid: FPN maps with keys P2..P6, [B, H_l, W_l, C].

    Returns:
      (features: list of [B, H_l, W_l, channels] for P2..P6,
       level_logits: list of [B, H_l, W_l] foreground logits for P2..P6,
       prior: [B, H_2, W_2, map_channels], the sum q of the projected levels,
       map_logits: [B, H_2, W_2] logits of the class-agnostic map at stride 4).
    """
    features, level_logits, prior = [], [], None
    stride4 = pyramid[LEVELS[0]]
    for name in LEVELS:
      x = pyramid[name]
      for j in range(self.num_convs):
        x = ConvGNReLU(self.channels, dtype=self.dtype, name=f"{name}_conv{j}")(x)
      features.append(x)
      logit = Conv(
        1,
        (1, 1),
        kernel_init=nn.initializers.normal(0.01),
        dtype=self.dtype,
        name=f"{name}_logit",
      )(x)
      level_logits.append(logit[..., 0])
      q = Conv(
        self.map_channels, (1, 1), kernel_init=_MSRA, dtype=self.dtype, name=f"{name}_prior"
      )(x)
      q = resize_bilinear(q, stride4.shape[1], stride4.shape[2])
      prior = q if prior is None else prior + q
    # A 3x3 conv before the binary classifier: q is a linear sum of the levels, and the
    # classifier needs a non-linear, spatially aware combination to sharpen the coarse levels'
    # contributions at the object boundaries.
    x = ConvGNReLU(self.map_channels, dtype=self.dtype, name="map_conv")(prior)
    map_logits = Conv(
      1, (1, 1), kernel_init=nn.initializers.normal(0.01), dtype=self.dtype, name="map_logit"
    )(x)
    return features, level_logits, prior, map_logits[..., 0]
