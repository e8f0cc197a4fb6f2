"""Feature Pyramid Network on C2..C5, detectron2's FPN with LastLevelMaxPool (P2..P6)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from segrpn_jax.models.layers import Conv
from segrpn_jax.ops.scale import MAX_LEVEL, MIN_LEVEL

# The single source of the pyramid's level names (ops/ defines the numbers, and ops never
# imports models): P2..P6 feed both RPNs and the class-agnostic module; P2..P5, the maps built
# from C2..C5, feed RoIAlign and the semantic head.
LEVEL_NUMBERS = tuple(range(MIN_LEVEL, MAX_LEVEL + 1))  # 2..6
LEVELS = tuple(f"P{level}" for level in LEVEL_NUMBERS)
ROI_LEVELS = LEVELS[:-1]
INPUT_LEVELS = LEVEL_NUMBERS[:-1]  # C2..C5 in, P2..P5 out; P6 is subsampled from P5

# detectron2's c2_xavier_fill: kaiming_uniform_(a=1), i.e. U(+-sqrt(3 / fan_in)), bias 0.
c2_xavier_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_nearest_2x(x_bxhxwxc, height: int, width: int):
  """Nearest-neighbour 2x upsampling cropped to (height, width).

  Args:
    x_bxhxwxc: the coarser map.
    height: target height (2H or 2H - 1: the finer level of an odd-sized map).
    width: target width.

  Returns:
    [B, height, width, C]; pixel (i, j) copies input pixel (i // 2, j // 2), like
    torch's F.interpolate(scale_factor=2, mode='nearest') before the crop.
  """
  up = jnp.repeat(jnp.repeat(x_bxhxwxc, 2, axis=1), 2, axis=2)
  return up[:, :height, :width, :]


class FPN(nn.Module):
  """Top-down feature pyramid with lateral connections (Lin et al. 2017).

  Module names follow detectron2 (fpn_lateral2 / fpn_output2 -> 'lateral2' /
  'output2'). No norm in the FPN, as in detectron2's default R50-FPN.

  Attributes:
    channels: width of every pyramid level.
    dtype: compute dtype (parameters stay float32).
  """

  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    """Builds P2..P6.

    Args:
      features: {'C2', 'C3', 'C4', 'C5'} NHWC backbone outputs, each level half
        (rounded up) the size of the previous one.

    Returns:
      {'P2', 'P3', 'P4', 'P5', 'P6'}: P_l has C_l's spatial size and `channels`
      channels; P6 = P5[:, ::2, ::2] (detectron2's LastLevelMaxPool: max pool with
      kernel 1, stride 2).
    """
    missing = [f"C{level}" for level in INPUT_LEVELS if f"C{level}" not in features]
    if missing:
      raise ValueError(f"FPN needs backbone features C2..C5; missing {missing}.")

    def conv(kernel: int, name: str) -> nn.Conv:
      pad = kernel // 2
      return Conv(
        self.channels,
        (kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        kernel_init=c2_xavier_init,
        bias_init=nn.initializers.zeros,
        dtype=self.dtype,
        name=name,
      )

    outputs = {}
    top_down = None
    for level in reversed(INPUT_LEVELS):
      c = features[f"C{level}"].astype(self.dtype)
      lateral = conv(1, f"lateral{level}")(c)
      if top_down is not None:
        lateral = lateral + upsample_nearest_2x(top_down, c.shape[1], c.shape[2])
      top_down = lateral
      outputs[f"P{level}"] = conv(3, f"output{level}")(lateral)
    outputs[LEVELS[-1]] = outputs[ROI_LEVELS[-1]][:, ::2, ::2, :]
    return {name: outputs[name] for name in LEVELS}
