"""Max pooling whose gradient is a few fused slices instead of XLA's select-and-scatter.

`flax.linen.max_pool` is a `reduce_window`; its gradient lowers to a select-and-scatter, which
XLA:CPU runs as a scatter with iotas of the whole padded input: 122 ms for the ResNet stem's 3x3
stride-2 pool at the quick start's shapes (batch 4, 128x256x32), against 14 ms here, where the
backward pass routes each output's gradient back through the tap that won its window (the index
of the winning tap is kept from the forward pass, one int8 per output) and places every tap's
share with a strided pad, all of which XLA fuses into one loop.

Values are `flax.linen.max_pool`'s exactly. The gradient is the same routing: on ties the first
tap in row-major window order wins, as in XLA's select-and-scatter and PyTorch's max_pool2d (a
ReLU's zeros tie often). Where windows overlap, an input that wins several windows sums their
gradients in another order, so the gradient equals XLA's up to float rounding.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def max_pool(
  x: jnp.ndarray, window_shape: Sequence[int], strides: Sequence[int], padding: Sequence
) -> jnp.ndarray:
  """Max pooling over height and width of an NHWC map, padded with -inf.

  Args:
    x: [N, H, W, C].
    window_shape: (k_h, k_w).
    strides: (s_h, s_w).
    padding: ((top, bottom), (left, right)), each smaller than the window.

  Returns:
    [N, H_out, W_out, C], H_out = (H + top + bottom - k_h) // s_h + 1 (likewise W_out).
  """
  window = tuple(int(k) for k in window_shape)
  stride = tuple(int(s) for s in strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if len(window) != 2 or len(stride) != 2 or len(pads) != 2:
    raise ValueError(
      f"max_pool takes a 2-D window, strides and padding, got {window}, {stride}, {pads}."
    )
  for k, (lo, hi) in zip(window, pads, strict=True):
    if not (0 <= lo < k and 0 <= hi < k):
      raise ValueError(
        f"max_pool padding {pads} must be non-negative and smaller than the window {window}: "
        "a window over padding alone would have no input to route its gradient to."
      )
  return _max_pool(x, window, stride, pads)


def _output_size(size: int, k: int, s: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - k) // s + 1


def _windows(x, window, stride, pads):
  """Yields (tap index, [N, H_out, W_out, C] strided slice of the -inf padded input) per tap."""
  (k_h, k_w), (s_h, s_w) = window, stride
  n, h, w, c = x.shape
  h_out = _output_size(h, k_h, s_h, pads[0])
  w_out = _output_size(w, k_w, s_w, pads[1])
  neg_inf = jnp.array(-jnp.inf, x.dtype)
  x_pad = lax.pad(x, neg_inf, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  for i in range(k_h):
    for j in range(k_w):
      end = (n, i + s_h * (h_out - 1) + 1, j + s_w * (w_out - 1) + 1, c)
      yield i * k_w + j, lax.slice(x_pad, (0, i, j, 0), end, (1, s_h, s_w, 1))


def _pool_with_winner(x, window, stride, pads):
  best = winner = None
  index_dtype = jnp.int8 if window[0] * window[1] <= 127 else jnp.int32
  for t, tap in _windows(x, window, stride, pads):
    if best is None:
      best, winner = tap, jnp.zeros(tap.shape, index_dtype)
    else:
      # Strictly greater: the first tap keeps a tie.
      better = tap > best
      best = jnp.where(better, tap, best)
      winner = jnp.where(better, jnp.asarray(t, index_dtype), winner)
  return best, winner


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pads):
  return _pool_with_winner(x, window, stride, pads)[0]


def _max_pool_fwd(x, window, stride, pads):
  pooled, winner = _pool_with_winner(x, window, stride, pads)
  return pooled, (winner, x.shape)


def _max_pool_bwd(window, stride, pads, residuals, g):
  winner, (n, h, w, c) = residuals
  (k_h, k_w), (s_h, s_w) = window, stride
  h_out, w_out = g.shape[1:3]
  h_pad, w_pad = h + sum(pads[0]), w + sum(pads[1])
  zero = jnp.zeros((), g.dtype)
  dx_pad = None
  for i in range(k_h):
    for j in range(k_w):
      share = jnp.where(winner == i * k_w + j, g, zero)
      # Output (y, x) read padded input (s_h*y + i, s_w*x + j): a pad with s-1 holes puts it back.
      placed = lax.pad(
        share,
        zero,
        (
          (0, 0, 0),
          (i, h_pad - i - s_h * (h_out - 1) - 1, s_h - 1),
          (j, w_pad - j - s_w * (w_out - 1) - 1, s_w - 1),
          (0, 0, 0),
        ),
      )
      dx_pad = placed if dx_pad is None else dx_pad + placed
  top, left = pads[0][0], pads[1][0]
  return (lax.slice(dx_pad, (0, top, left, 0), (n, top + h, left + w, c)),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
