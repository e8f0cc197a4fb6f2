"""ops.conv: values and gradients equal lax.conv_general_dilated's and jax.grad of it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from segrpn_jax.models.layers import Conv
from segrpn_jax.ops import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _loss(conv_fn, strides, padding):
  """A scalar whose gradient sends a different cotangent to every output element."""

  def loss(x, w):
    y = conv_fn(x, w, strides, padding, dimension_numbers=NHWC).astype(jnp.float32)
    weights = jnp.sin(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y * weights)

  return loss


# (kernel, stride, padding, batch): 1x1, 3x3 and 7x7; strides 1 and 2; 'SAME', 'VALID', explicit
# symmetric (the ResNet's) and asymmetric; batch 1 and 3. Odd sizes so a stride-2 grid does not
# reach the padded border.
CASES = [
  (1, 1, "VALID", 1),
  (1, 2, "VALID", 3),
  (3, 1, "SAME", 3),
  (3, 2, ((1, 1), (1, 1)), 1),
  (3, 2, "SAME", 3),
  (3, 1, ((0, 2), (1, 0)), 1),
  (7, 2, ((3, 3), (3, 3)), 1),
]


@pytest.mark.parametrize("kernel,stride,padding,batch", CASES)
def test_float32_values_and_gradients_equal_lax(kernel, stride, padding, batch):
  x = jax.random.normal(jax.random.key(0), (batch, 13, 10, 5))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 4))
  strides = (stride, stride)
  ours = conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
  grads = jax.grad(_loss(conv.conv_general_dilated, strides, padding), (0, 1))(x, w)
  ref_grads = jax.grad(_loss(lax.conv_general_dilated, strides, padding), (0, 1))(x, w)
  if kernel == 1 and stride == 1:  # a matrix product on CPU: the same sums in another order
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0], ref_grads[0], rtol=1e-5, atol=1e-5)
  else:  # XLA's own convolution and input gradient
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(grads[0], ref_grads[0])
  # The weight gradient sums the same products in another order: float32 rounding.
  np.testing.assert_allclose(grads[1], ref_grads[1], rtol=1e-5, atol=1e-5)
  assert grads[1].dtype == w.dtype


def test_non_square_kernels_equal_lax():
  # The stride-1 weight gradient takes one product per kernel column: k_h != k_w checks that
  # rows and columns are not swapped.
  x = jax.random.normal(jax.random.key(0), (2, 9, 11, 3))
  for kernel_hw, padding in [((2, 3), "SAME"), ((3, 1), ((2, 0), (0, 0))), ((1, 3), "SAME")]:
    w = jax.random.normal(jax.random.key(1), (*kernel_hw, 3, 4))
    loss = _loss(conv.conv_general_dilated, (1, 1), padding)
    ref_loss = _loss(lax.conv_general_dilated, (1, 1), padding)
    dx, dw = jax.grad(loss, (0, 1))(x, w)
    ref_dx, ref_dw = jax.grad(ref_loss, (0, 1))(x, w)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_equal_lax_to_bfloat16_rounding():
  x = jax.random.normal(jax.random.key(0), (2, 12, 9, 8)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 6)).astype(jnp.bfloat16)
  loss = _loss(conv.conv_general_dilated, (1, 1), "SAME")
  ref_loss = _loss(lax.conv_general_dilated, (1, 1), "SAME")
  dx, dw = jax.grad(loss, (0, 1))(x, w)
  ref_dx, ref_dw = jax.grad(ref_loss, (0, 1))(x, w)
  assert dw.dtype == jnp.bfloat16
  np.testing.assert_array_equal(dx.astype(np.float32), ref_dx.astype(np.float32))
  # Ours accumulates in float32 and rounds once; bfloat16 keeps 8 significant bits.
  scale = float(jnp.max(jnp.abs(ref_dw.astype(jnp.float32))))
  np.testing.assert_allclose(
    dw.astype(np.float32), ref_dw.astype(np.float32), rtol=2**-7, atol=scale * 2**-7
  )


def test_weight_grad_gemm_equals_the_xla_weight_gradient_it_replaces_on_cpu():
  x = jax.random.normal(jax.random.key(0), (2, 11, 9, 3))
  # Stride 2: one product per tap; stride 1: one per kernel column.
  for strides, dy_shape in [((2, 2), (2, 6, 5, 4)), ((1, 1), (2, 11, 9, 4))]:
    dy = jax.random.normal(jax.random.key(1), dy_shape)
    args = {"kernel_shape": (3, 3, 3, 4), "strides": strides, "pads": ((1, 1), (1, 1))}
    # Full float32 products: a GPU would otherwise run both in TF32 (10-bit mantissas).
    with jax.default_matmul_precision("highest"):
      ours, xla = conv.weight_grad_gemm(x, dy, **args), conv.weight_grad_xla(x, dy, **args)
    np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)


def test_hand_computed_weight_gradient():
  # 1x1 input channel, 2x2 kernel, VALID, stride 1 on a 2x3 image, dY all ones:
  # dW[i, j] = sum of the 1x2 window of x starting at (i, j).
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)  # [[0, 1, 2], [3, 4, 5]]
  dw = conv.weight_grad_gemm(
    x, jnp.ones((1, 1, 2, 1)), kernel_shape=(2, 2, 1, 1), strides=(1, 1), pads=((0, 0), (0, 0))
  )
  np.testing.assert_array_equal(dw[..., 0, 0], [[0 + 1, 1 + 2], [3 + 4, 4 + 5]])


def test_other_convolutions_go_to_lax_unchanged():
  # Dilation and feature groups are not ours: the result is lax's, gradient included.
  x = jax.random.normal(jax.random.key(0), (1, 9, 9, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
  kwargs = {"dimension_numbers": NHWC, "rhs_dilation": (2, 2), "feature_group_count": 2}
  ours = conv.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
  np.testing.assert_array_equal(ours, lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs))


def test_flax_layer_has_nn_conv_parameters_and_outputs():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  layer, ref = Conv(4, (3, 3), strides=(2, 2)), nn.Conv(4, (3, 3), strides=(2, 2))
  variables = ref.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, layer.init(jax.random.key(1), x)) == jax.tree.map(
    jnp.shape, variables
  )
  np.testing.assert_array_equal(layer.apply(variables, x), ref.apply(variables, x))
