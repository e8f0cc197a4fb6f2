"""torchvision ResNet state dicts -> ResNet variables: key mapping, file formats, errors, numerics.

The torchvision layout below is our own table of torchvision's ResNet definition
(key names and shapes), independent of the model code; the NumPy forward works
on that state dict in torchvision's NCHW/OIHW layout.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from absl import flags

from segrpn_jax import convert_resnet, errors, pretrained
from segrpn_jax.models.resnet import ResNet

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def torchvision_layout(depth):
  """Key -> shape of torchvision.models.resnet<depth>().state_dict()."""
  bottleneck = depth >= 50
  shapes = {"conv1.weight": (64, 3, 7, 7)}

  def bn(prefix, c):
    shapes.update(
      {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}
    )
    shapes[f"{prefix}.num_batches_tracked"] = ()

  bn("bn1", 64)
  inplanes = 64
  for stage, (num_blocks, planes) in enumerate(
    zip(BLOCKS[depth], (64, 128, 256, 512), strict=True)
  ):
    out = planes * 4 if bottleneck else planes
    for b in range(num_blocks):
      p = f"layer{stage + 1}.{b}"
      if bottleneck:
        shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
        shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
        shapes[f"{p}.conv3.weight"] = (out, planes, 1, 1)
        for i, c in ((1, planes), (2, planes), (3, out)):
          bn(f"{p}.bn{i}", c)
      else:
        shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
        shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
        bn(f"{p}.bn1", planes)
        bn(f"{p}.bn2", planes)
      if b == 0 and (stage > 0 or inplanes != out):
        shapes[f"{p}.downsample.0.weight"] = (out, inplanes, 1, 1)
        bn(f"{p}.downsample.1", out)
      inplanes = out
  shapes["fc.weight"] = (1000, inplanes)
  shapes["fc.bias"] = (1000,)
  return shapes


def random_state_dict(depth, seed=0):
  """A torchvision-shaped state dict with He-scaled convs and random BN statistics."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in torchvision_layout(depth).items():
    if key.endswith("num_batches_tracked"):
      state[key] = np.array(1000, np.int64)
    elif len(shape) == 4:
      fan_in = shape[1] * shape[2] * shape[3]
      state[key] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    elif key.endswith("running_var"):
      state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif key.endswith("weight"):  # BN scale
      state[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
    else:
      state[key] = rng.normal(0.0, 0.1, shape).astype(np.float32)
  return state


def flax_path(key):
  """Our reading of the naming contract: torchvision key -> ResNet variable path."""
  parts = key.split(".")
  leaf = parts.pop()
  modules = []
  while parts:
    part = parts.pop(0)
    if part.isdigit():
      modules.append(f"block{part}")
    elif part == "downsample":
      modules.append("downsample_conv" if parts.pop(0) == "0" else "downsample_bn")
    else:
      modules.append(part)
  if leaf == "weight" and modules[-1].startswith(("conv", "downsample_conv")):
    return ("params", *modules, "kernel")
  bn_leaf = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
  return ("frozen_bn", *modules, bn_leaf[leaf])


def _get(tree, path):
  for name in path:
    tree = tree[name]
  return tree


@pytest.fixture(scope="module")
def r18_state():
  return random_state_dict(18, seed=1)


def test_layout_table_matches_torchvision_parameter_count():
  # torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters (no buffers).
  def count(depth):
    return sum(
      int(np.prod(s))
      for k, s in torchvision_layout(depth).items()
      if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )

  assert count(18) == 11_689_512
  assert count(50) == 25_557_032


def test_resnet50_npz_and_safetensors_map_every_key(tmp_path):
  state = random_state_dict(50)
  np.savez(tmp_path / "r50.npz", **state)
  safetensors.numpy.save_file(state, tmp_path / "r50.safetensors", metadata={"format": "pt"})
  from_npz = pretrained.load_torchvision_resnet(str(tmp_path / "r50.npz"), 50)
  from_st = pretrained.load_torchvision_resnet(str(tmp_path / "r50.safetensors"), 50)
  assert jax.tree.all(jax.tree.map(np.array_equal, from_npz, from_st))

  # Every backbone key lands where the naming contract says, conv weights OIHW -> HWIO.
  used = [k for k in state if not k.startswith("fc.") and "num_batches" not in k]
  assert len(jax.tree.leaves(from_npz)) == len(used) == 265
  for key in used:
    expected = state[key].transpose(2, 3, 1, 0) if state[key].ndim == 4 else state[key]
    np.testing.assert_array_equal(_get(from_npz, flax_path(key)), expected, err_msg=key)

  # ResNet(50).apply takes the result as it is: same tree, shapes and dtypes as init.
  model = ResNet(depth=50, norm="frozen_bn")
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  init_shapes = jax.eval_shape(model.init, jax.random.key(0), images)
  as_struct = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  assert as_struct(from_npz) == as_struct(init_shapes)
  features = jax.eval_shape(model.apply, from_npz, images)
  assert features["C5"].shape == (1, 2, 2, 2048)


# --- NumPy forward of torchvision's ResNet, NCHW and OIHW as torch computes it -----------------


def _conv_nchw(x, w_oihw, stride, pad):
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  kh, kw = w_oihw.shape[2:]
  out_h = (xp.shape[2] - kh) // stride + 1
  out_w = (xp.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], w_oihw.shape[0], out_h, out_w))
  for i in range(kh):
    for j in range(kw):
      patch = xp[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
      out += np.einsum("nchw,oc->nohw", patch, w_oihw[:, :, i, j])
  return out


def _bn_nchw(x, state, prefix):
  channel = lambda name: state[f"{prefix}.{name}"][None, :, None, None].astype(np.float64)
  normalised = (x - channel("running_mean")) / np.sqrt(channel("running_var") + 1e-5)
  return normalised * channel("weight") + channel("bias")


def _max_pool_3x3_s2_nchw(x):
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  out_h, out_w = (xp.shape[2] - 3) // 2 + 1, (xp.shape[3] - 3) // 2 + 1
  windows = [
    xp[:, :, i : i + 2 * out_h : 2, j : j + 2 * out_w : 2] for i in range(3) for j in range(3)
  ]
  return np.max(windows, axis=0)


def torchvision_forward_reference(state, depth, images_nhwc):
  """C2..C5 (NHWC) of torchvision's ResNet with these weights, in float64."""
  relu = lambda v: np.maximum(v, 0.0)
  x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
  x = relu(_bn_nchw(_conv_nchw(x, state["conv1.weight"], 2, 3), state, "bn1"))
  x = _max_pool_3x3_s2_nchw(x)
  outputs = {}
  for stage, num_blocks in enumerate(BLOCKS[depth]):
    for b in range(num_blocks):
      p = f"layer{stage + 1}.{b}"
      stride = 2 if stage > 0 and b == 0 else 1
      conv_bn = lambda y, i, s, pad, p=p: _bn_nchw(
        _conv_nchw(y, state[f"{p}.conv{i}.weight"], s, pad), state, f"{p}.bn{i}"
      )
      if depth >= 50:
        y = relu(conv_bn(x, 1, 1, 0))
        y = relu(conv_bn(y, 2, stride, 1))
        y = conv_bn(y, 3, 1, 0)
      else:
        y = relu(conv_bn(x, 1, stride, 1))
        y = conv_bn(y, 2, 1, 1)
      if f"{p}.downsample.0.weight" in state:
        shortcut = _conv_nchw(x, state[f"{p}.downsample.0.weight"], stride, 0)
        x = relu(y + _bn_nchw(shortcut, state, f"{p}.downsample.1"))
      else:
        x = relu(y + x)
    outputs[f"C{stage + 2}"] = x.transpose(0, 2, 3, 1)
  return outputs


def test_resnet18_with_converted_weights_matches_numpy_torchvision(tmp_path, r18_state):
  np.savez(tmp_path / "r18.npz", **r18_state)
  variables = pretrained.load_torchvision_resnet(str(tmp_path / "r18.npz"), 18)
  # Odd sizes exercise torchvision's explicit paddings (33x25 after the stem conv).
  images = np.random.default_rng(0).normal(size=(2, 66, 50, 3)).astype(np.float32)
  features = jax.jit(ResNet(depth=18).apply)(variables, images)
  expected = torchvision_forward_reference(r18_state, 18, images)
  for name in ("C2", "C3", "C4", "C5"):
    assert features[name].shape == expected[name].shape, name
    scale = np.abs(expected[name]).max()
    np.testing.assert_allclose(features[name], expected[name], atol=1e-4 * scale, err_msg=name)


def test_batch_norm_variables_for_a_bn_resnet(tmp_path, r18_state):
  path = _write_npz(tmp_path / "r18.npz", r18_state)
  variables = pretrained.load_torchvision_resnet(path, 18, norm="bn")
  model = ResNet(depth=18, norm="bn")
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  as_struct = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  assert as_struct(variables) == as_struct(jax.eval_shape(model.init, jax.random.key(0), images))
  for key, path_ in {
    "bn1.weight": ("params", "bn1", "scale"),
    "layer2.0.downsample.1.bias": ("params", "layer2", "block0", "downsample_bn", "bias"),
    "layer4.1.bn2.running_mean": ("batch_stats", "layer4", "block1", "bn2", "mean"),
    "layer3.0.bn1.running_var": ("batch_stats", "layer3", "block0", "bn1", "var"),
  }.items():
    np.testing.assert_array_equal(_get(variables, path_), r18_state[key], err_msg=key)
  with pytest.raises(errors.ConfigError, match=r"norm='gn' cannot take them"):
    pretrained.load_torchvision_resnet(path, 18, norm="gn")


def _write_npz(path, state):
  np.savez(path, **state)
  return str(path)


def test_missing_key_is_named(tmp_path, r18_state):
  state = dict(r18_state)
  del state["layer3.1.bn2.running_var"]
  with pytest.raises(errors.DataError, match=r"missing keys: layer3\.1\.bn2\.running_var"):
    pretrained.load_torchvision_resnet(_write_npz(tmp_path / "m.npz", state), 18)


def test_unexpected_key_is_named(tmp_path, r18_state):
  state = dict(r18_state, **{"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
  with pytest.raises(errors.DataError, match=r"unexpected keys: layer5\.0\.conv1\.weight"):
    pretrained.load_torchvision_resnet(_write_npz(tmp_path / "u.npz", state), 18)


def test_misshaped_key_is_named(tmp_path, r18_state):
  state = dict(r18_state, **{"layer2.0.downsample.0.weight": np.zeros((128, 64, 3, 3))})
  with pytest.raises(
    errors.DataError, match=r"layer2\.0\.downsample\.0\.weight is \(128, 64, 3, 3\)"
  ):
    pretrained.load_torchvision_resnet(_write_npz(tmp_path / "s.npz", state), 18)


def test_wrong_depth_is_reported(tmp_path, r18_state):
  with pytest.raises(errors.DataError, match=r"ResNet-34 state dict; missing keys: layer1\.2\."):
    pretrained.load_torchvision_resnet(_write_npz(tmp_path / "d.npz", r18_state), 34)


def test_width_multiplier_cannot_take_imagenet_weights(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"width_multiplier=0\.25"):
    pretrained.load_torchvision_resnet(str(tmp_path / "any.npz"), 50, width_multiplier=0.25)


def test_bad_files_are_explained(tmp_path, monkeypatch):
  with pytest.raises(errors.InputFileError, match=r"nowhere\.npz' does not exist"):
    pretrained.load_torchvision_resnet(str(tmp_path / "nowhere.npz"), 50)
  (tmp_path / "w.bin").write_bytes(b"0")
  with pytest.raises(errors.DataError, match=r"unknown extension '\.bin'"):
    pretrained.load_torchvision_resnet(str(tmp_path / "w.bin"), 50)
  # Without torch a .pth is refused with the way out, whether or not torch is installed here.
  monkeypatch.setitem(sys.modules, "torch", None)
  (tmp_path / "w.pth").write_bytes(b"0")
  with pytest.raises(pretrained.TorchMissingError) as error:
    pretrained.load_torchvision_resnet(str(tmp_path / "w.pth"), 50)
  message = str(error.value)
  assert message.startswith(f"Reading {str(tmp_path / 'w.pth')!r} needs PyTorch")
  assert "pip install '.[bench]'" in message and "segrpn_jax.convert_resnet" in message
  # A project error (printed without traceback by the tools), still an ImportError to callers.
  assert isinstance(error.value, errors.UserError) and isinstance(error.value, ImportError)


def test_safetensors_files_are_read_through_the_package(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {
    "a": rng.normal(size=(2, 3)).astype(np.float32),
    "half": rng.normal(size=(5,)).astype(np.float16),
    "count": np.array(7, np.int64),
  }
  path = tmp_path / "t.safetensors"
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
  read = pretrained.read_state_dict(str(path))
  assert sorted(read) == sorted(tensors)
  for name, array in tensors.items():
    assert read[name].dtype == array.dtype and read[name].shape == array.shape, name
    np.testing.assert_array_equal(read[name], array)

  # A truncated file is one ValueError that names it, not the package's own exception.
  (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-4])
  with pytest.raises(
    errors.DataError, match=r"cut\.safetensors' is not a readable safetensors file"
  ):
    pretrained.load_torchvision_resnet(str(tmp_path / "cut.safetensors"), 18)


def _convert(argv):
  """segrpn_jax.convert_resnet's main with absl flags parsed from argv, in process."""
  flag_values = flags.FlagValues()
  convert_resnet.define_flags(flag_values)
  flag_values(["convert_resnet", *argv])
  return convert_resnet.main(["convert_resnet"], flag_values)


def test_convert_command_writes_an_equivalent_npz(tmp_path, r18_state, capsys):
  source = tmp_path / "r18.safetensors"
  safetensors.numpy.save_file(r18_state, source)
  output = tmp_path / "weights" / "r18.npz"  # its folder is created
  _convert([f"--input={source}", f"--output={output}", "--depth=18"])
  assert capsys.readouterr().out.startswith(f"Wrote {output}: {len(r18_state)} keys")
  with np.load(output) as npz:
    assert sorted(npz.files) == sorted(r18_state)
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "fc.bias"):
      np.testing.assert_array_equal(npz[key], r18_state[key])
  with pytest.raises(errors.DataError, match="ResNet-50 state dict"):
    _convert([f"--input={source}", f"--output={tmp_path / 'x.npz'}", "--depth=50"])
  assert not (tmp_path / "x.npz").exists()
  with pytest.raises(errors.InputFileError, match=r"--output must end in \.npz"):
    _convert([f"--input={source}", f"--output={tmp_path / 'x.pth'}", "--depth=18"])
  with pytest.raises(flags.IllegalFlagValueError):
    _convert([f"--input={source}", f"--output={output}", "--depth=19"])


def test_convert_command_reports_a_missing_file_without_a_traceback(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "segrpn_jax.convert_resnet", f"--input={tmp_path}/nowhere.pth",
     f"--output={tmp_path}/w.npz", "--depth=50"],
    capture_output=True, text=True, cwd=tmp_path,
  )  # fmt: skip
  assert done.returncode == errors.EXIT_USER_ERROR, done.stderr
  assert done.stderr.startswith(f"error: Pretrained weights file '{tmp_path}/nowhere.pth' does")
  assert "Traceback" not in done.stderr
