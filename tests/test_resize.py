"""ops.resize: whole-factor bilinear upsampling equals jax.image.resize, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.ops import resize


def _reference(x, height, width):
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, height, width, c), "bilinear")


def _vjp(fn, x, g):
  return jax.vjp(fn, x)[1](g)[0]


# (shape, height factor, width factor): the model's 2x between levels, 4x onto the image, up to
# 16x (P6 onto stride 4), one axis unchanged, single rows and columns (both taps clamp).
@pytest.mark.parametrize(
  ("shape", "f_h", "f_w"),
  [
    ((2, 3, 5, 4), 2, 2),
    ((1, 4, 6, 19), 4, 4),
    ((1, 2, 3, 2), 16, 8),
    ((2, 5, 3, 1), 1, 3),
    ((1, 1, 1, 3), 4, 2),
  ],
)
def test_values_and_gradient_equal_jax_image_resize(shape, f_h, f_w):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  height, width = shape[1] * f_h, shape[2] * f_w
  want = _reference(x, height, width)
  got = resize.resize_bilinear(x, height, width)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  g = jax.random.normal(jax.random.PRNGKey(1), want.shape)
  np.testing.assert_allclose(
    _vjp(lambda v: resize.resize_bilinear(v, height, width), x, g),
    _vjp(lambda v: _reference(v, height, width), x, g),
    rtol=1e-5,
    atol=1e-5,
  )


def test_upsampling_by_hand():
  # Half-pixel centres, 2 -> 4: outputs sample 0.75 a + 0.25 (clamped a), then 3:1 blends.
  x = jnp.array([2.0, 6.0]).reshape(1, 1, 2, 1)
  got = resize.resize_bilinear(x, 1, 4)[0, 0, :, 0]
  np.testing.assert_allclose(got, [2.0, 3.0, 5.0, 6.0])
  # The gradient is the transpose: [[1, .75, .25, 0], [0, .25, .75, 1]] times g.
  g = jnp.array([1.0, 10.0, 100.0, 1000.0]).reshape(1, 1, 4, 1)
  dx = _vjp(lambda v: resize.resize_bilinear(v, 1, 4), x, g)[0, 0, :, 0]
  np.testing.assert_allclose(dx, [1.0 + 7.5 + 25.0, 2.5 + 75.0 + 1000.0])


def test_other_sizes_are_jax_image_resize():
  # Not a whole factor (an odd finer map, a downsampling): jax.image.resize, bit for bit.
  x = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 6, 3))
  for height, width in ((7, 11), (2, 3), (8, 9)):
    np.testing.assert_array_equal(
      resize.resize_bilinear(x, height, width), _reference(x, height, width)
    )


def test_bfloat16_keeps_dtype():
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 3, 4, 2)).astype(jnp.bfloat16)
  got = resize.resize_bilinear(x, 6, 8)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    got.astype(jnp.float32), _reference(x, 6, 8).astype(jnp.float32), rtol=2e-2, atol=2e-2
  )
  dx = _vjp(lambda v: resize.resize_bilinear(v, 6, 8), x, jnp.ones((1, 6, 8, 2), jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16
