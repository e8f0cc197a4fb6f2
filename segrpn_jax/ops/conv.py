"""A 2-D convolution whose gradients run at a matrix product's rate on XLA:CPU.

XLA:CPU lowers the weight gradient of a convolution to a convolution whose "kernel" is the
whole output gradient. At the model's stride-4 shapes (128x256 at 512x1024 input) that runs at
a tenth of the forward's rate or less; `scripts/bench_conv.py` measures it. Here the weight
gradient of a k_h x k_w kernel is instead made of matrix products:

  dW[i, j] = sum over (n, y, x) of x_pad[n, s*y + i, s*x + j, :]^T dY[n, y, x, :]     (C_in x C_out)

With stride 1, one product per kernel column j: the input's column slice (every padded row)
against dY placed at each row offset i, so k_w copies of the input instead of k_h * k_w; with
other strides, one product per tap, each a strided slice of the padded input. dY is transposed
once so that every product has the layout XLA's matrix product takes without a copy.

A 1x1 convolution of stride 1 without padding (the ResNet's bottleneck ends, the FPN's
laterals, every predictor) is one matrix product over the channels on CPU, value and
gradients: XLA:CPU runs those convolutions at a quarter of a product's rate or less where a
side has few channels. (With stride 2, the ResNet's downsampling shortcut, the product's input
gradient, a padding with holes, is slower than XLA's: that one stays a convolution.)

Otherwise the forward and the input gradient stay XLA's own convolutions (they already run at
a convolution's rate), and on GPU and TPU everything is XLA's own convolution: the choice is
made per platform when the program is lowered (`lax.platform_dependent`), so one jitted
function serves every backend.

`conv_general_dilated` has `lax.conv_general_dilated`'s signature, so flax's
`nn.Conv(conv_general_dilated=...)` takes it; anything but an NHWC/HWIO convolution without
dilation or groups goes to `lax.conv_general_dilated` unchanged.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], tuple[int, int]]


def conv_general_dilated(
  lhs,
  rhs,
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
):
  """`lax.conv_general_dilated` with a GEMM weight gradient on CPU (see the module docstring).

  Args:
    lhs, rhs, window_strides, padding, ...: as `lax.conv_general_dilated`.

  Returns:
    The convolution, equal to `lax.conv_general_dilated`'s (a 1x1 one on CPU up to float
    rounding); its gradients equal `jax.grad` of it up to float rounding (the sums run in
    another order).
  """
  fast = (
    lhs.ndim == 4
    and rhs.ndim == 4
    and _is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
    and all(d == 1 for d in (rhs_dilation or (1, 1)))
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
  )
  if not fast:
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if rhs.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)) and strides == (1, 1):
    return lax.platform_dependent(
      lhs,
      rhs,
      cpu=functools.partial(pointwise_dot, precision=precision),
      default=functools.partial(_conv, strides=strides, pads=pads, precision=precision),
    )
  return _conv(lhs, rhs, strides, pads, precision)


def pointwise_dot(x, w, *, precision=None):
  """A 1x1 convolution of stride 1 without padding as one matrix product over the channels.

  XLA:CPU runs 1x1 convolutions as convolutions, at a quarter of a matrix product's rate or less
  where one side has few channels (ResNet's 256 -> 64 reductions) and at about 1 % of it for a
  single output channel (the level logits); the product runs at the matrix product's rate, and
  its gradients are plain products too.

  Args:
    x: [N, H, W, C_in].
    w: [1, 1, C_in, C_out].
    precision: as `lax.conv_general_dilated`'s.

  Returns:
    [N, H, W, C_out], the convolution's value up to float rounding.
  """
  return lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())), precision=precision)


def _is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  return given == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides: tuple[int, int], pads: Padding, precision):
  return _xla_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads, precision), x)
  (dx,) = input_vjp(dy)
  dw = lax.platform_dependent(
    x,
    dy,
    cpu=functools.partial(weight_grad_gemm, kernel_shape=w.shape, strides=strides, pads=pads),
    default=functools.partial(
      weight_grad_xla, kernel_shape=w.shape, strides=strides, pads=pads, precision=precision
    ),
  )
  return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def weight_grad_gemm(x, dy, *, kernel_shape, strides: tuple[int, int], pads: Padding):
  """The weight gradient as matrix products: one per kernel column (stride 1) or per tap.

  Args:
    x: [N, H, W, C_in] convolution input.
    dy: [N, H_out, W_out, C_out] gradient of the convolution output.
    kernel_shape: (k_h, k_w, C_in, C_out).
    strides: (s_h, s_w).
    pads: ((top, bottom), (left, right)), as `lax.conv_general_dilated` takes them.

  Returns:
    [k_h, k_w, C_in, C_out] weight gradient in x's dtype.
  """
  k_h, k_w, c_in, c_out = kernel_shape
  n, h_out, w_out, _ = dy.shape
  s_h, s_w = strides
  x_pad = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  # dY^T once, [C_out, N, H_out, W_out]: each product is then [.., C_out, K] x [K, C_in], the
  # layout XLA:CPU's matrix product takes as it is; contracting the taps' leading axes instead
  # makes XLA transpose every tap (k_h * k_w copies of the input) before its product.
  dy_t = jnp.transpose(dy, (3, 0, 1, 2))
  contract = (((2, 3, 4), (0, 1, 2)), ((), ()))
  if strides == (1, 1):
    # Stride 1: one product per kernel column instead of per tap. Column j's input slice keeps
    # every padded row; dY stands at each row offset i of the padded height (zero elsewhere),
    # so [k_h, C_out, K] x [K, C_in] gives the whole column. k_w slices of the input instead of
    # k_h * k_w (each a full copy) and (H + k_h - 1) / H of the products' work.
    h_pad = x_pad.shape[1]
    zero = jnp.zeros((), dy.dtype)
    rows = jnp.stack(
      [
        lax.pad(dy_t, zero, ((0, 0, 0), (0, 0, 0), (i, h_pad - h_out - i, 0), (0, 0, 0)))
        for i in range(k_h)
      ]
    )
    columns = []
    for j in range(k_w):
      column = lax.slice(x_pad, (0, 0, j, 0), (n, h_pad, j + w_out, c_in))
      columns.append(lax.dot_general(rows, column, contract, preferred_element_type=jnp.float32))
    dw = jnp.stack(columns, axis=1)  # [k_h, k_w, C_out, C_in]
  else:
    taps = []
    for i in range(k_h):
      for j in range(k_w):
        tap = lax.slice(
          x_pad,
          (0, i, j, 0),
          (n, i + s_h * (h_out - 1) + 1, j + s_w * (w_out - 1) + 1, c_in),
          (1, s_h, s_w, 1),
        )
        taps.append(
          lax.dot_general(dy_t[None], tap, contract, preferred_element_type=jnp.float32)[0]
        )
    dw = jnp.stack(taps).reshape(k_h, k_w, c_out, c_in)
  return jnp.transpose(dw, (0, 1, 3, 2)).astype(x.dtype)


def weight_grad_xla(
  x, dy, *, kernel_shape, strides: tuple[int, int], pads: Padding, precision=None
):
  """The weight gradient as XLA computes it (`jax.vjp` of the convolution): GPU and TPU."""
  _, kernel_vjp = jax.vjp(
    lambda w: _xla_conv(x, w, strides, pads, precision), jnp.zeros(kernel_shape, x.dtype)
  )
  return kernel_vjp(dy)[0]
