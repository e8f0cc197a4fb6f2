"""layers.GroupNorm: flax's nn.GroupNorm's parameters, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.models.layers import GroupNorm


def _params(channels):
  return {
    "params": {
      "scale": jax.random.normal(jax.random.key(2), (channels,)),
      "bias": jax.random.normal(jax.random.key(3), (channels,)),
    }
  }


@pytest.mark.parametrize("groups,epsilon", [(32, 1e-6), (4, 1e-5), (1, 1e-6)])
def test_values_and_gradients_equal_flax(groups, epsilon):
  # Batch 2 with different statistics per image and per group (offsets and scales per channel).
  x = (
    jax.random.normal(jax.random.key(0), (2, 5, 7, 64)) * jnp.linspace(0.5, 4.0, 64)
    + jnp.arange(64.0) / 8
  )
  ours, ref = GroupNorm(num_groups=groups, epsilon=epsilon), nn.GroupNorm(groups, epsilon=epsilon)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
    jnp.shape, ref.init(jax.random.key(1), x)
  )
  variables = _params(64)
  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), atol=2e-5)

  def loss(module):
    weights = jnp.sin(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)
    return lambda v, x_: jnp.sum(jax.nn.relu(module.apply(v, x_)) * weights)

  grads = jax.grad(loss(ours), (0, 1))(variables, x)
  ref_grads = jax.grad(loss(ref), (0, 1))(variables, x)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_hand_computed_case():
  # One group of 2 channels over 2 pixels: values 0, 2, 4, 6 -> mean 3, variance 5.
  x = jnp.array([0.0, 2.0, 4.0, 6.0]).reshape(1, 1, 2, 2)
  y = GroupNorm(num_groups=1, epsilon=0.0).apply(_params_ones(2), x)
  np.testing.assert_allclose(y.ravel(), (np.array([0, 2, 4, 6]) - 3) / np.sqrt(5), rtol=1e-6)


def _params_ones(channels):
  return {"params": {"scale": jnp.ones(channels), "bias": jnp.zeros(channels)}}


def test_output_dtype_and_bad_groups():
  x = jnp.ones((1, 2, 2, 8), jnp.bfloat16)
  assert GroupNorm(num_groups=4).apply(_params_ones(8), x).dtype == jnp.bfloat16
  assert GroupNorm(num_groups=4, dtype=jnp.float32).apply(_params_ones(8), x).dtype == jnp.float32
  with pytest.raises(ValueError, match="8 channels do not split into 3 groups"):
    GroupNorm(num_groups=3).init(jax.random.key(0), x)
