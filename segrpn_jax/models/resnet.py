"""ResNet-18/34/50/101 backbone in torchvision's layout, returning C2..C5 (NHWC).

The module tree mirrors torchvision's state-dict names so ImageNet weights import
1:1 (see `segrpn_jax.pretrained`): stem `conv1`/`bn1`, stages `layer1`..`layer4`,
blocks `block0`.., convs `conv1`..`conv3` with norms `bn1`..`bn3`, and the projection
shortcut `downsample_conv`/`downsample_bn` (torchvision's `downsample.0`/`.1`).
As in torchvision (ResNet v1.5) a bottleneck strides on its 3x3 conv.

Norms: `frozen_bn` (fixed affine; statistics and affine in the non-trainable
collection 'frozen_bn', the paper's setting), `bn` (flax BatchNorm, collection
'batch_stats') or `gn` (GroupNorm with 32 groups).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segrpn_jax.models.layers import Conv, GroupNorm
from segrpn_jax.ops import pool

# (block kind, blocks per stage) of each supported depth, as torchvision defines them.
STAGE_BLOCKS = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
}
STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)  # the 3x3 conv width of each stage at width_multiplier 1
EXPANSION = {"basic": 1, "bottleneck": 4}
NORMS = ("frozen_bn", "bn", "gn")
GN_GROUPS = 32
BN_EPS = 1e-5  # torchvision's BatchNorm2d default
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")  # res2..res5 -> C2..C5

# torchvision initialises convs with kaiming_normal(mode='fan_out', nonlinearity='relu').
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def scaled_width(channels: int, width_multiplier: float) -> int:
  """Scales a channel count, keeping it a positive multiple of the GroupNorm groups.

  Args:
    channels: the width at width_multiplier 1.
    width_multiplier: the scale factor (> 0).

  Returns:
    round(channels * width_multiplier) to a multiple of 32, at least 32; exactly
    `channels` when width_multiplier is 1.
  """
  if width_multiplier == 1.0:
    return channels
  return max(GN_GROUPS, round(channels * width_multiplier / GN_GROUPS) * GN_GROUPS)


def frozen_stages(freeze_at: int) -> tuple[str, ...]:
  """Top-level ResNet module names frozen at a detectron2 FREEZE_AT level.

  Args:
    freeze_at: 0 freezes nothing, 1 the stem (conv1, bn1), 2 the stem and layer1
      (res2), k in 3..5 additionally layer2..layer{k-1}.

  Returns:
    The names of the frozen top-level modules, e.g. ('conv1', 'bn1', 'layer1'), for
    masking them out of the optimizer.
  """
  if not 0 <= freeze_at <= 5:
    raise ValueError(f"freeze_at must be in 0..5 (detectron2 FREEZE_AT), got {freeze_at}.")
  if freeze_at == 0:
    return ()
  return ("conv1", "bn1", *STAGE_NAMES[: freeze_at - 1])


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics and affine, torchvision's FrozenBatchNorm2d.

  All four arrays live in the non-trainable collection 'frozen_bn' with
  torchvision's roles: scale = weight, bias = bias, mean = running_mean,
  var = running_var. Initialised as the identity up to eps.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.variable("frozen_bn", "scale", jnp.ones, (channels,), jnp.float32).value
    bias = self.variable("frozen_bn", "bias", jnp.zeros, (channels,), jnp.float32).value
    mean = self.variable("frozen_bn", "mean", jnp.zeros, (channels,), jnp.float32).value
    var = self.variable("frozen_bn", "var", jnp.ones, (channels,), jnp.float32).value
    # Folded into one multiply-add, as detectron2's FrozenBatchNorm2d does.
    multiplier = scale * jax.lax.rsqrt(var + BN_EPS)
    offset = bias - mean * multiplier
    return x * multiplier.astype(self.dtype) + offset.astype(self.dtype)


def make_norm(norm: str, dtype: Any, train: bool, frozen: bool, name: str) -> nn.Module:
  """Builds one normalisation layer.

  Args:
    norm: 'frozen_bn', 'bn' or 'gn'.
    dtype: compute dtype.
    train: whether BatchNorm uses (and updates) batch statistics.
    frozen: the layer belongs to a frozen stage; BatchNorm then keeps its running
      statistics, as detectron2 turns frozen stages' BN into FrozenBatchNorm.
    name: the module name (torchvision's, e.g. 'bn1').

  Returns:
    The flax module.
  """
  if norm == "frozen_bn":
    return FrozenBatchNorm(dtype=dtype, name=name)
  if norm == "bn":
    return nn.BatchNorm(
      use_running_average=not train or frozen,
      momentum=0.9,  # torchvision momentum 0.1 in flax's convention
      epsilon=BN_EPS,
      dtype=dtype,
      name=name,
    )
  if norm == "gn":
    return GroupNorm(num_groups=GN_GROUPS, epsilon=BN_EPS, dtype=dtype, name=name)
  raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  # Explicit symmetric padding kernel // 2 is torchvision's; 'SAME' would pad
  # asymmetrically for stride 2 and shift every feature by half a pixel.
  pad = kernel // 2
  return Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=conv_init,
    dtype=dtype,
    name=name,
  )


def _shortcut(x, out_channels: int, stride: int, norm: Callable[[str], nn.Module], dtype: Any):
  """The residual branch: identity, or torchvision's strided 1x1 conv + norm ('downsample')."""
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  return norm("downsample_bn")(_conv(out_channels, 1, stride, dtype, "downsample_conv")(x))


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual (ResNet-18/34), torchvision's BasicBlock."""

  width: int
  stride: int = 1
  norm: str = "frozen_bn"
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm: Callable[[str], nn.Module] = lambda name: make_norm(
      self.norm, self.dtype, train, self.frozen, name
    )
    out_channels = self.width * EXPANSION["basic"]
    y = nn.relu(norm("bn1")(_conv(self.width, 3, self.stride, self.dtype, "conv1")(x)))
    y = norm("bn2")(_conv(out_channels, 3, 1, self.dtype, "conv2")(y))
    return nn.relu(y + _shortcut(x, out_channels, self.stride, norm, self.dtype))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 x4 with a residual, torchvision's Bottleneck (v1.5)."""

  width: int
  stride: int = 1
  norm: str = "frozen_bn"
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm: Callable[[str], nn.Module] = lambda name: make_norm(
      self.norm, self.dtype, train, self.frozen, name
    )
    out_channels = self.width * EXPANSION["bottleneck"]
    y = nn.relu(norm("bn1")(_conv(self.width, 1, 1, self.dtype, "conv1")(x)))
    y = nn.relu(norm("bn2")(_conv(self.width, 3, self.stride, self.dtype, "conv2")(y)))
    y = norm("bn3")(_conv(out_channels, 1, 1, self.dtype, "conv3")(y))
    return nn.relu(y + _shortcut(x, out_channels, self.stride, norm, self.dtype))


class Stage(nn.Module):
  """A torchvision `layerN`: blocks 'block0'.., the first one strided."""

  block_cls: type
  num_blocks: int
  width: int
  stride: int
  norm: str
  frozen: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.num_blocks):
      x = self.block_cls(
        width=self.width,
        stride=self.stride if i == 0 else 1,
        norm=self.norm,
        frozen=self.frozen,
        dtype=self.dtype,
        name=f"block{i}",
      )(x, train)
    return x


class ResNet(nn.Module):
  """ResNet backbone returning the outputs of res2..res5.

  Attributes:
    depth: 18, 34, 50 or 101.
    norm: 'frozen_bn' (paper), 'bn' or 'gn'.
    width_multiplier: scales the stem and every stage width (see `scaled_width`);
      ImageNet weights need 1.0.
    dtype: compute dtype (parameters stay float32).
    freeze_at: detectron2's FREEZE_AT (see `frozen_stages`); outputs of frozen
      stages pass through stop_gradient so no gradient is computed for them.
  """

  depth: int = 50
  norm: str = "frozen_bn"
  width_multiplier: float = 1.0
  dtype: Any = jnp.float32
  freeze_at: int = 0

  @nn.compact
  def __call__(self, images, train: bool = False):
    """Runs the backbone.

    Args:
      images: [B, H, W, 3] images (normalised as the weights expect).
      train: BatchNorm ('bn') uses and updates batch statistics when True.

    Returns:
      {'C2', 'C3', 'C4', 'C5'}: NHWC features at strides 4, 8, 16, 32 (sizes are
      ceil-divided at every stride-2 step, as in torchvision).
    """
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}.")
    if self.norm not in NORMS:
      raise ValueError(f"ResNet norm must be one of {NORMS}, got {self.norm!r}.")
    frozen = frozen_stages(self.freeze_at)
    kind, blocks_per_stage = STAGE_BLOCKS[self.depth]
    block_cls = BasicBlock if kind == "basic" else Bottleneck

    x = images.astype(self.dtype)
    x = _conv(scaled_width(STEM_WIDTH, self.width_multiplier), 7, 2, self.dtype, "conv1")(x)
    x = make_norm(self.norm, self.dtype, train, "bn1" in frozen, "bn1")(x)
    x = nn.relu(x)
    x = pool.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if "conv1" in frozen:
      x = jax.lax.stop_gradient(x)

    features = {}
    for stage, (name, num_blocks, width) in enumerate(
      zip(STAGE_NAMES, blocks_per_stage, STAGE_WIDTHS, strict=True)
    ):
      stage_frozen = name in frozen
      x = Stage(
        block_cls=block_cls,
        num_blocks=num_blocks,
        width=scaled_width(width, self.width_multiplier),
        stride=1 if stage == 0 else 2,
        norm=self.norm,
        frozen=stage_frozen,
        dtype=self.dtype,
        name=name,
      )(x, train)
      if stage_frozen:
        x = jax.lax.stop_gradient(x)
      features[f"C{stage + 2}"] = x
    return features
