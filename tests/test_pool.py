"""ops.pool.max_pool: flax's max_pool values exactly; its gradient routing, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops import pool

# (window, strides, padding, shape): the ResNet stem's 3x3/2 pad 1 on odd and even sizes, an
# asymmetric window and padding, and non-overlapping windows.
CASES = [
  ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 9, 12, 3)),
  ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 8, 7, 2)),
  ((2, 3), (1, 2), ((0, 1), (2, 0)), (2, 6, 9, 2)),
  ((2, 2), (2, 2), ((0, 0), (0, 0)), (1, 6, 8, 4)),
]


def _flax(window, strides, padding):
  return lambda x: nn.max_pool(x, window, strides=strides, padding=padding)


def _ours(window, strides, padding):
  return lambda x: pool.max_pool(x, window, strides, padding)


def _grad(fn, x, g):
  return jax.vjp(fn, x)[1](g)[0]


@pytest.mark.parametrize(("window", "strides", "padding", "shape"), CASES)
def test_values_and_gradient_equal_flax_max_pool(window, strides, padding, shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  x = nn.relu(x)  # a ReLU's zeros: ties in most windows of a sparse map
  ref, ours = _flax(window, strides, padding), _ours(window, strides, padding)
  np.testing.assert_array_equal(ours(x), ref(x))
  g = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  want, got = _grad(ref, x, g), _grad(ours, x, g)
  # The same inputs receive gradient (same winners, ties included) ...
  np.testing.assert_array_equal(got != 0, want != 0)
  # ... and the same sums, added in another order where windows overlap.
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gradient_by_hand_first_tap_wins_a_tie():
  # 4x4 map, 3x3 windows, stride 2, padding 1: outputs (0,0),(0,1),(1,0),(1,1) look at padded
  # rows/cols 0-2 and 2-4, i.e. input rows/cols {0,1} and {1,2,3}. Input (1,1) and (1,2) both
  # hold the maximum 5; (1,1) comes first in row-major window order in every window that holds
  # both, so it takes the gradient of windows (0,0), (0,1), (1,0), (1,1): 1 + 2 + 3 + 4.
  x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 1, 0].set(5.0).at[0, 1, 2, 0].set(5.0)
  g = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  ours = _ours((3, 3), (2, 2), ((1, 1), (1, 1)))
  np.testing.assert_array_equal(ours(x)[0, ..., 0], [[5.0, 5.0], [5.0, 5.0]])
  want = np.zeros((4, 4))
  want[1, 1] = 10.0
  np.testing.assert_array_equal(_grad(ours, x, g)[0, ..., 0], want)


def test_bfloat16_keeps_dtype_and_values():
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 7, 9, 3)).astype(jnp.bfloat16)
  args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
  got = _ours(*args)(x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got, _flax(*args)(x))
  assert _grad(_ours(*args), x, jnp.ones_like(got)).dtype == jnp.bfloat16


def test_padding_as_large_as_the_window_is_refused():
  with pytest.raises(ValueError, match="smaller than the window"):
    pool.max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2), (1, 1), ((2, 0), (0, 0)))
