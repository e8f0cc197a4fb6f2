"""ResNet and FPN: shapes, strides, freezing; NumPy references for a bottleneck and the FPN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax.models.fpn import FPN
from segrpn_jax.models.resnet import Bottleneck, ResNet, frozen_stages, scaled_width

IMAGE_SHAPE = (1, 128, 256, 3)
# C2..C5 channels at width_multiplier 0.25: stage widths 64/128/256/512 -> 32/32/64/128.
TINY_CHANNELS = {
  18: (32, 32, 64, 128),
  34: (32, 32, 64, 128),
  50: (128, 128, 256, 512),
  101: (128, 128, 256, 512),
}


def _expected_shapes(depth, image_shape=IMAGE_SHAPE):
  b, h, w, _ = image_shape
  return {
    f"C{level}": (b, -(-h // 2**level), -(-w // 2**level), c)
    for level, c in zip((2, 3, 4, 5), TINY_CHANNELS[depth], strict=True)
  }


def _shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


def random_variables(module, *inputs, seed=0):
  """Variables with the tree of `module.init`, filled by NumPy.

  Skips compiling flax's initializers (threefry init of a ResNet compiles for
  seconds on CPU); the values are random wherever the formula has a term.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_output_shapes_and_strides_traced(depth):
  model = ResNet(depth=depth, width_multiplier=0.25)
  images = jax.ShapeDtypeStruct(IMAGE_SHAPE, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  features = jax.eval_shape(model.apply, variables, images)
  assert _shapes(features) == _expected_shapes(depth)
  assert set(variables) == {"params", "frozen_bn"}
  num_blocks = {18: 8, 34: 16, 50: 16, 101: 33}[depth]
  assert sum(len(variables["params"][f"layer{i}"]) for i in range(1, 5)) == num_blocks


def test_odd_input_sizes_round_up_like_torchvision():
  # torchvision's padded stride-2 convs and pool give ceil(n / 2) at every step.
  model = ResNet(depth=50, width_multiplier=0.25)
  images = jax.ShapeDtypeStruct((2, 100, 150, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  features = jax.eval_shape(model.apply, variables, images)
  assert {k: v.shape[1:3] for k, v in features.items()} == {
    "C2": (25, 38),
    "C3": (13, 19),
    "C4": (7, 10),
    "C5": (4, 5),
  }


def test_full_width_resnet50_parameter_count_matches_torchvision():
  # torchvision resnet50 has 25,557,032 parameters; the fc layer has 2048 * 1000 + 1000.
  variables = jax.eval_shape(
    ResNet(depth=50, norm="bn").init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
  )
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert count == 25_557_032 - (2048 * 1000 + 1000)


def test_scaled_width_keeps_gn_divisible_widths():
  assert [scaled_width(c, 1.0) for c in (64, 128, 256, 512)] == [64, 128, 256, 512]
  assert [scaled_width(c, 0.25) for c in (64, 128, 256, 512)] == [32, 32, 64, 128]
  assert [scaled_width(c, 0.5) for c in (64, 128, 256, 512)] == [32, 64, 128, 256]
  assert all(scaled_width(c, 0.3) % 32 == 0 for c in (64, 128, 256, 512))


def test_frozen_stages_names():
  assert frozen_stages(0) == ()
  assert frozen_stages(1) == ("conv1", "bn1")
  assert frozen_stages(2) == ("conv1", "bn1", "layer1")
  assert frozen_stages(5) == ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
  with pytest.raises(ValueError, match="freeze_at"):
    frozen_stages(6)


def test_frozen_stages_get_zero_gradient_and_keep_bn_statistics():
  model = ResNet(depth=18, norm="bn", width_multiplier=0.25, freeze_at=2)
  images = np.random.default_rng(1).normal(size=IMAGE_SHAPE).astype(np.float32)
  variables = random_variables(model, images)

  def loss_fn(params):
    features, updates = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      images,
      train=True,
      mutable=["batch_stats"],
    )
    loss = sum(jnp.mean(jnp.square(x)) for x in features.values())
    return loss, (features, updates["batch_stats"])

  # The one real ResNet forward of this file: ResNet-18 at width 0.25.
  grads, (features, stats) = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
  assert _shapes(features) == _expected_shapes(18)
  for name, x in features.items():
    assert float(jnp.min(x)) >= 0.0, name  # every stage ends in a ReLU
    assert float(jnp.max(x)) > 0.0, name

  frozen = frozen_stages(2)
  assert set(frozen) <= set(grads)
  for name, grad in grads.items():
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grad)]
    if name in frozen:
      assert max(norms) == 0.0, name
    else:
      assert min(norms) > 0.0, name
  # Frozen stages' BatchNorm keeps its running statistics; trained stages update theirs.
  old, new = variables["batch_stats"], stats
  for name in ("bn1", "layer1"):
    assert jax.tree.all(jax.tree.map(np.array_equal, old[name], new[name])), name
  for name in ("layer2", "layer3", "layer4"):
    assert not jax.tree.all(jax.tree.map(np.array_equal, old[name], new[name])), name


# --- NumPy references (NHWC, HWIO kernels) ------------------------------------------------


def _conv_reference(x_bhwc, kernel_hwio, stride, pad, bias=None):
  kh, kw = kernel_hwio.shape[:2]
  xp = np.pad(x_bhwc, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h = (xp.shape[1] - kh) // stride + 1
  out_w = (xp.shape[2] - kw) // stride + 1
  out = np.zeros((x_bhwc.shape[0], out_h, out_w, kernel_hwio.shape[3]), np.float64)
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
      out += np.einsum("bhwc,co->bhwo", patch, kernel_hwio[i, j])
  return out if bias is None else out + bias


def _frozen_bn_reference(x, stats):
  return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * stats["scale"] + stats["bias"]


def test_bottleneck_with_downsample_matches_numpy():
  block = Bottleneck(width=4, stride=2, norm="frozen_bn")
  x = np.random.default_rng(1).normal(size=(2, 7, 9, 8)).astype(np.float32)
  variables = random_variables(block, x)  # random frozen statistics: every term matters
  out = jax.jit(block.apply)(variables, x)

  p = jax.tree.map(np.asarray, variables["params"])
  s = variables["frozen_bn"]
  relu = lambda v: np.maximum(v, 0.0)
  y = relu(_frozen_bn_reference(_conv_reference(x, p["conv1"]["kernel"], 1, 0), s["bn1"]))
  y = relu(_frozen_bn_reference(_conv_reference(y, p["conv2"]["kernel"], 2, 1), s["bn2"]))
  y = _frozen_bn_reference(_conv_reference(y, p["conv3"]["kernel"], 1, 0), s["bn3"])
  shortcut = _frozen_bn_reference(
    _conv_reference(x, p["downsample_conv"]["kernel"], 2, 0), s["downsample_bn"]
  )
  expected = relu(y + shortcut)
  assert out.shape == (2, 4, 5, 16)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_fpn_shapes_and_values_match_numpy_on_odd_sizes():
  rng = np.random.default_rng(0)
  sizes = {2: (13, 19), 3: (7, 10), 4: (4, 5), 5: (2, 3)}  # ceil-halved like a 50x75 image
  features = {
    f"C{level}": rng.normal(size=(2, h, w, 4 * level)).astype(np.float32)
    for level, (h, w) in sizes.items()
  }
  fpn = FPN(channels=8)
  variables = random_variables(fpn, features)
  outputs = jax.jit(fpn.apply)(variables, features)
  assert {k: v.shape for k, v in outputs.items()} == {
    "P2": (2, 13, 19, 8),
    "P3": (2, 7, 10, 8),
    "P4": (2, 4, 5, 8),
    "P5": (2, 2, 3, 8),
    "P6": (2, 1, 2, 8),
  }
  p = variables["params"]

  top_down = None
  for level in (5, 4, 3, 2):
    lat = p[f"lateral{level}"]
    inner = _conv_reference(features[f"C{level}"], lat["kernel"], 1, 0, lat["bias"])
    if top_down is not None:
      h, w = sizes[level]
      inner += top_down.repeat(2, axis=1).repeat(2, axis=2)[:, :h, :w]
    top_down = inner
    out = p[f"output{level}"]
    expected = _conv_reference(inner, out["kernel"], 1, 1, out["bias"])
    np.testing.assert_allclose(outputs[f"P{level}"], expected, rtol=1e-4, atol=1e-4)
  # LastLevelMaxPool: a 1x1 max pool with stride 2 is plain subsampling.
  np.testing.assert_array_equal(outputs["P6"], np.asarray(outputs["P5"])[:, ::2, ::2])


def test_fpn_init_is_c2_xavier_fill():
  # kaiming_uniform(a=1): U(-b, b) with b = sqrt(3 / fan_in); for fan_in 9 * 64, b ~ 0.072.
  features = {f"C{level}": jnp.zeros((1, 4, 4, 8)) for level in (2, 3, 4, 5)}
  # An rbg key: the distribution is the initializer's, and it compiles 4x faster than threefry.
  params = jax.jit(FPN(channels=64).init)(jax.random.key(0, impl="rbg"), features)["params"]
  kernel = np.asarray(params["output2"]["kernel"])
  bound = np.sqrt(3.0 / (9 * 64))
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.99 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3.0), rtol=0.02)
  for name, conv in params.items():
    np.testing.assert_array_equal(conv["bias"], 0.0, err_msg=name)
