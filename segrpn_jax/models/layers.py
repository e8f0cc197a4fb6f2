"""The model's convolution and GroupNorm layers, drop-in for flax's `nn.Conv` and `nn.GroupNorm`.

Every convolution of the model is `Conv`: flax's `nn.Conv` over `ops.conv.conv_general_dilated`,
whose weight gradient runs at a matrix product's rate on XLA:CPU and whose 1x1 convolutions are
matrix products (on GPU and TPU both are XLA's own; see `ops/conv.py`). Every GroupNorm is
`GroupNorm`, which takes its statistics as per-channel sums over space first and then over the
groups' channels: XLA:CPU runs that reduction (and its gradient) two to four times faster than
`nn.GroupNorm`'s reduction over the grouped [N, H, W, G, C/G] view, for the same values.
Arguments, parameter names and shapes are flax's, so checkpoints are unchanged.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from segrpn_jax.ops import conv

Conv = functools.partial(nn.Conv, conv_general_dilated=conv.conv_general_dilated)


class GroupNorm(nn.Module):
  """GroupNorm over the channels of an NHWC map (Wu & He 2018), as flax's `nn.GroupNorm`.

  Statistics in float32: mean and E[x^2] - mean^2 over (H, W) and each group's C / G channels,
  then a per-channel scale (init 1) and bias (init 0). The parameters are 'scale' and 'bias' of
  shape [C], as `nn.GroupNorm`'s; the module's automatic name is 'GroupNorm_<i>', as its.

  Attributes:
    num_groups: G; must divide the channels.
    epsilon: added to the variance.
    dtype: the output dtype (None: the input's).
    param_dtype: the parameters' dtype.
  """

  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    n, h, w, c = x.shape
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups.")
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    count = h * w * (c // self.num_groups)
    # Per channel over space, then per group: [N, C] -> [N, G].
    mean = jnp.sum(x32, axis=(1, 2)).reshape(n, self.num_groups, -1).sum(-1) / count
    mean_sq = jnp.sum(x32 * x32, axis=(1, 2)).reshape(n, self.num_groups, -1).sum(-1) / count
    inv = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + self.epsilon)
    # Back to channels: y = x * a + b with a = scale / std, b = bias - mean * a.
    a = jnp.repeat(inv, c // self.num_groups, axis=1) * scale.astype(jnp.float32)
    b = bias.astype(jnp.float32) - jnp.repeat(mean, c // self.num_groups, axis=1) * a
    y = x32 * a[:, None, None, :] + b[:, None, None, :]
    return y.astype(self.dtype or x.dtype)
