"""Bilinear upsampling by whole factors as two shifted slices per output phase.

`jax.image.resize` computes a bilinear resize as one dense matrix product per axis ([out, in]
weights, mostly zeros), plus the transposes that bring each axis last. For the whole factors the
model upsamples by (2x between pyramid levels, up to 16x onto stride 4, 4x from stride 4 to the
image), an output row is a fixed blend of two neighbouring input rows: with half-pixel centres,
output o = f*i + r samples input position i + d_r, d_r = (r + 0.5) / f - 0.5, so

  y[f*i + r] = (1 - |d_r|) * x[i] + |d_r| * x[i + sign(d_r)]          (edges clamped)

Each of the f phases is two slices of the edge-padded input, and the gradient is the adjoint:
each phase's share placed back with pads, the clamped edges folded in, all one fused loop per
axis (`jax.custom_vjp`, since autodiff of the interleave would materialise every phase).

`resize_bilinear` takes any size: whole factors go this way, anything else (downsampling, or a
finer map of odd size) goes to `jax.image.resize`. Both are PyTorch's
`interpolate(mode="bilinear", align_corners=False)` when upsampling; the values here equal
`jax.image.resize`'s up to float rounding.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax


def resize_bilinear(x_bxhxwxc: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """Bilinear resize with half-pixel centres (PyTorch interpolate, align_corners=False).

  Args:
    x_bxhxwxc: [B, H, W, C] map.
    height: output height.
    width: output width.

  Returns:
    [B, height, width, C] in the input dtype.
  """
  b, h, w, c = x_bxhxwxc.shape
  if height % h == 0 and width % w == 0:
    x = x_bxhxwxc
    if width != w:
      x = upsample_axis(x, width // w, 2)
    if height != h:
      x = upsample_axis(x, height // h, 1)
    return x
  return jax.image.resize(x_bxhxwxc, (b, height, width, c), "bilinear").astype(x_bxhxwxc.dtype)


def _phases(factor: int) -> list[tuple[int, float]]:
  """Per output phase r: (offset of the other tap, -1 or +1; its weight |d_r|)."""
  phases = []
  for r in range(factor):
    d = (r + 0.5) / factor - 0.5
    phases.append((-1 if d < 0 else 1, abs(d)))
  return phases


def _slice_axis(x, start: int, size: int, axis: int):
  return lax.slice_in_dim(x, start, start + size, axis=axis)


def _pad_axis(x, lo: int, hi: int, axis: int):
  config = [(0, 0, 0)] * x.ndim
  config[axis] = (lo, hi, 0)
  return lax.pad(x, jnp.zeros((), x.dtype), config)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def upsample_axis(x: jnp.ndarray, factor: int, axis: int) -> jnp.ndarray:
  """Bilinear upsampling of one axis by a whole factor (half-pixel centres, edges clamped).

  Args:
    x: any array.
    factor: output size / input size, >= 1.
    axis: the axis to upsample.

  Returns:
    x with axis `axis` `factor` times as long, in x's dtype.
  """
  n = x.shape[axis]
  # Edge padding by one on each side: x_e[k] = x[clip(k - 1, 0, n - 1)].
  x_e = jnp.concatenate([_slice_axis(x, 0, 1, axis), x, _slice_axis(x, n - 1, 1, axis)], axis=axis)
  outputs = []
  for step, weight in _phases(factor):
    other = _slice_axis(x_e, 1 + step, n, axis)  # x[i + step], clamped
    blend = x * jnp.asarray(1.0 - weight, x.dtype) + other * jnp.asarray(weight, x.dtype)
    outputs.append(blend)
  y = jnp.stack(outputs, axis=axis + 1)  # [..., n, factor, ...]
  return y.reshape(*x.shape[:axis], n * factor, *x.shape[axis + 1 :])


def _upsample_axis_fwd(x, factor, axis):
  return upsample_axis(x, factor, axis), x.shape[axis]


def _upsample_axis_bwd(factor, axis, n, g):
  # Output f*i + r took (1 - |d_r|) of x[i] and |d_r| of x[i + step_r]. Summed over the phases:
  # own[i] is what x[i] gave as the centre tap; from_next[i] (from_prev[i]) what x[i + 1]
  # (x[i - 1]) gave to outputs of tile i as their other tap, so it belongs to dx[i + 1] (dx[i - 1]).
  g = g.reshape(*g.shape[:axis], n, factor, *g.shape[axis + 1 :])
  own = from_next = from_prev = None
  for r, (step, weight) in enumerate(_phases(factor)):
    g_r = lax.index_in_dim(g, r, axis=axis + 1, keepdims=False)
    own = _accumulate(own, g_r * jnp.asarray(1.0 - weight, g.dtype))
    if step > 0:
      from_next = _accumulate(from_next, g_r * jnp.asarray(weight, g.dtype))
    else:
      from_prev = _accumulate(from_prev, g_r * jnp.asarray(weight, g.dtype))
  dx = own
  # Tile i's outputs that read x[i + 1] give it to dx[i + 1]; the last tile's read the clamped
  # edge, x[n - 1] itself. Likewise x[i - 1], and the first tile's clamp to x[0].
  if from_next is not None:
    dx = dx + _pad_axis(_slice_axis(from_next, 0, n - 1, axis), 1, 0, axis)
    dx = dx + _pad_axis(_slice_axis(from_next, n - 1, 1, axis), n - 1, 0, axis)
  if from_prev is not None:
    dx = dx + _pad_axis(_slice_axis(from_prev, 1, n - 1, axis), 0, 1, axis)
    dx = dx + _pad_axis(_slice_axis(from_prev, 0, 1, axis), 0, n - 1, axis)
  return (dx,)


def _accumulate(total, term):
  return term if total is None else total + term


upsample_axis.defvjp(_upsample_axis_fwd, _upsample_axis_bwd)
