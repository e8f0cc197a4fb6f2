"""ImageNet weights: torchvision ResNet state dicts converted to `ResNet` variables.

Accepted files hold torchvision's keys (`conv1.weight`, `bn1.running_mean`,
`layer1.0.downsample.0.weight`, ...): `.pth` (read with torch, imported only
then), `.npz` (see python -m segrpn_jax.convert_resnet) or `.safetensors` (the
`safetensors` package).

The ResNet module names mirror torchvision's, so the mapping is mechanical:
`layerN.K.` <-> `layerN/blockK/`, `downsample.0`/`.1` <-> `downsample_conv`/
`downsample_bn`, conv `weight` (OIHW) <-> `params/.../kernel` (HWIO), and BN
`weight`/`bias`/`running_mean`/`running_var` <-> `frozen_bn/.../scale`/`bias`/
`mean`/`var`.

torchvision's weights expect RGB in [0, 1] normalised with PIXEL_MEAN and
PIXEL_STD; the backbone does not normalise its input.

Bad input raises the project's errors (segrpn_jax.errors): a missing file is an
InputFileError, a file that does not hold a ResNet of the depth a DataError, a
model that cannot take ImageNet weights a ConfigError, and a `.pth` without torch
installed a TorchMissingError naming the install command.
"""

import functools
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from segrpn_jax import errors
from segrpn_jax.models.resnet import STAGE_BLOCKS, ResNet
from segrpn_jax.models.segrpn import resnet_depth

# The input normalisation of the whole package (the batch contract's `image`): RGB scaled to
# [0, 1], minus PIXEL_MEAN, divided by PIXEL_STD, as torchvision's ImageNet weights expect.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)

# Keys of a torchvision ResNet state dict that the backbone does not use: the
# ImageNet classifier and BatchNorm's step counters. They are skipped silently.
SKIPPED_KEY_PATTERN = re.compile(r"^fc\.(weight|bias)$|(^|\.)num_batches_tracked$")

# What installs torch: the `bench` extra of pyproject.toml (torch and torchvision).
TORCH_INSTALL = "pip install 'segrpn-jax[bench]'  (from a clone: pip install '.[bench]')"


class TorchMissingError(errors.UserError, ImportError):
  """A `.pth` file needs PyTorch to be read, and it is not installed."""


_BN_LEAF_TO_TORCH = {
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torchvision state dict from .pth, .npz or .safetensors.

  Args:
    path: the file; the format is chosen by its extension.

  Returns:
    key -> NumPy array, keys as in the file.
  """
  if not os.path.exists(path):
    raise errors.InputFileError(
      f"Pretrained weights file {path!r} does not exist: check the path, or download the "
      "torchvision ResNet weights and convert them (python -m segrpn_jax.convert_resnet)."
    )
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt"):
    try:
      import torch  # optional: only .pth files need it
    except ImportError as e:
      raise TorchMissingError(
        f"Reading {path!r} needs PyTorch, which is not installed: install it with "
        f"{TORCH_INSTALL}, or convert the file once on a machine with torch "
        "(python -m segrpn_jax.convert_resnet --input=X.pth --output=X.npz --depth=N) and "
        "pass the .npz (a .safetensors file with the same keys works too)."
      ) from e
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
      raise errors.DataError(
        f"Pretrained weights file {path!r} is not a readable .pth file ({e}); re-download it."
      ) from e
    if not isinstance(state, dict):
      raise errors.DataError(
        f"{path}: expected a state dict (mapping of tensors), got {type(state)}; save "
        "model.state_dict(), not the model."
      )
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  if ext == ".safetensors":
    try:
      return safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
      raise errors.DataError(
        f"Pretrained weights file {path!r} is not a readable safetensors file ({e}); "
        "re-download or re-convert it."
      ) from e
  raise errors.DataError(
    f"Pretrained weights file {path!r}: unknown extension {ext!r}; use .pth, .npz or .safetensors."
  )


def torchvision_key(path: tuple[str, ...]) -> str:
  """Maps a ResNet variable path to its torchvision state-dict key.

  Args:
    path: (collection, module, ..., leaf), e.g. ('params', 'layer1', 'block0',
      'downsample_conv', 'kernel').

  Returns:
    The torchvision key, e.g. 'layer1.0.downsample.0.weight'.
  """
  collection, *modules, leaf = path
  parts = []
  for module in modules:
    if module.startswith("block"):
      parts.append(module[len("block") :])
    elif module == "downsample_conv":
      parts.append("downsample.0")
    elif module == "downsample_bn":
      parts.append("downsample.1")
    else:
      parts.append(module)
  if collection == "params" and leaf == "kernel":
    parts.append("weight")
  elif collection == "frozen_bn":
    parts.append(_BN_LEAF_TO_TORCH[leaf])
  else:
    raise ValueError(f"No torchvision counterpart for ResNet variable {'/'.join(path)}.")
  return ".".join(parts)


@functools.cache
def _expected_layout(depth: int) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """torchvision key -> (ResNet variable path, torchvision shape) for one depth."""
  model = ResNet(depth=depth, norm="frozen_bn")
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  layout = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    path = tuple(k.key for k in key_path)
    shape = leaf.shape
    if len(shape) == 4:  # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    layout[torchvision_key(path)] = (path, shape)
  return layout


def _listing(items: list[str], limit: int = 8) -> str:
  shown = ", ".join(items[:limit])
  return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"


def variables_from_state_dict(state: dict, depth: int, source: str = "state dict") -> dict:
  """Converts an in-memory torchvision ResNet state dict to `ResNet` variables.

  `fc.weight`, `fc.bias` and every `*.num_batches_tracked` are expected extras and
  are skipped; any other key the backbone lacks, any backbone key the dict lacks
  and any shape mismatch is an error naming the key.

  Args:
    state: key -> array (NumPy or anything np.asarray takes), torchvision's keys.
    depth: 18, 34, 50 or 101; must be the depth the weights were trained with.
    source: what to call the dict in error messages (the file name).

  Returns:
    {'params': ..., 'frozen_bn': ...} nested dicts of float32 arrays, conv kernels
    in HWIO, BatchNorm affine and running statistics in 'frozen_bn'.
  """
  if depth not in STAGE_BLOCKS:
    raise errors.ConfigError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}.")
  layout = _expected_layout(depth)
  used = {k: v for k, v in state.items() if not SKIPPED_KEY_PATTERN.search(k)}
  missing = sorted(set(layout) - set(used))
  unexpected = sorted(set(used) - set(layout))
  misshaped = [
    f"{k} is {tuple(np.shape(used[k]))}, ResNet-{depth} needs {layout[k][1]}"
    for k in sorted(set(layout) & set(used))
    if tuple(np.shape(used[k])) != layout[k][1]
  ]
  problems = []
  if missing:
    problems.append(f"missing keys: {_listing(missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {_listing(unexpected)}")
  if misshaped:
    problems.append(f"mis-shaped keys: {_listing(misshaped)}")
  if problems:
    raise errors.DataError(
      f"{source} is not a torchvision ResNet-{depth} state dict; {'; '.join(problems)}. "
      "(fc.* and *.num_batches_tracked are skipped.) Check the depth "
      "(config.model.backbone) matches the weights."
    )

  variables: dict = {}
  for key, (var_path, _) in layout.items():
    value = np.asarray(used[key], dtype=np.float32)
    if value.ndim == 4:  # OIHW -> HWIO
      value = value.transpose(2, 3, 1, 0)
    node = variables
    for name in var_path[:-1]:
      node = node.setdefault(name, {})
    node[var_path[-1]] = jnp.asarray(value)
  return variables


def frozen_bn_to_batch_norm(variables: dict) -> dict:
  """Re-files frozen-BN variables for `ResNet(norm='bn')` (flax BatchNorm).

  Args:
    variables: {'params', 'frozen_bn'} as `variables_from_state_dict` returns them.

  Returns:
    {'params', 'batch_stats'}: each norm's scale/bias joins the trainable params
    and its mean/var become the BatchNorm running statistics.
  """
  params = jax.tree.map(lambda x: x, variables["params"])  # a fresh nested dict
  batch_stats: dict = {}

  def refile(frozen: dict, params_node: dict, stats_node: dict) -> None:
    for name, child in frozen.items():
      if set(child) == set(_BN_LEAF_TO_TORCH):
        params_node.setdefault(name, {}).update(scale=child["scale"], bias=child["bias"])
        stats_node[name] = {"mean": child["mean"], "var": child["var"]}
      else:
        refile(child, params_node.setdefault(name, {}), stats_node.setdefault(name, {}))

  refile(variables["frozen_bn"], params, batch_stats)
  return {"params": params, "batch_stats": batch_stats}


def load_torchvision_resnet(
  path: str, depth: int, width_multiplier: float = 1.0, norm: str = "frozen_bn"
) -> dict:
  """Reads a torchvision ResNet state dict file as `ResNet(depth, norm=norm)` variables.

  Args:
    path: .pth (needs torch), .npz or .safetensors file with torchvision's keys.
    depth: 18, 34, 50 or 101; must be the depth the weights were trained with.
    width_multiplier: the model's width multiplier; ImageNet weights need 1.0.
    norm: 'frozen_bn' (the paper's) or 'bn'; GroupNorm models cannot take
      BatchNorm-trained weights.

  Returns:
    {'params': ..., 'frozen_bn': ...} as `variables_from_state_dict` returns them,
    or {'params': ..., 'batch_stats': ...} for norm='bn'.
  """
  if width_multiplier != 1.0:
    raise errors.ConfigError(
      f"ImageNet ResNet weights ({path!r}) have the standard widths; a model with "
      f"width_multiplier={width_multiplier} cannot take them. Set width_multiplier=1.0 "
      "or train from scratch (pretrained='')."
    )
  if norm not in ("frozen_bn", "bn"):
    raise errors.ConfigError(
      f"torchvision ResNet weights ({path!r}) are BatchNorm-trained; norm={norm!r} cannot "
      "take them. Use norm='frozen_bn' or 'bn', or train from scratch (pretrained='')."
    )
  if depth not in STAGE_BLOCKS:
    raise errors.ConfigError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}.")
  variables = variables_from_state_dict(read_state_dict(path), depth, source=path)
  return frozen_bn_to_batch_norm(variables) if norm == "bn" else variables


def check_pretrained_file(config: ml_collections.ConfigDict) -> str:
  """The expanded path of config.model.pretrained; an error naming the key if it is missing."""
  path = os.path.expanduser(config.model.pretrained)
  if config.model.pretrained and not os.path.exists(path):
    raise errors.InputFileError(
      f"config.model.pretrained = {config.model.pretrained!r} does not exist; point it at a "
      "torchvision ResNet state dict (.pth/.npz/.safetensors; python -m segrpn_jax.convert_resnet "
      "makes one) or set it to '' to train from scratch."
    )
  return path


def merge_pretrained_backbone(variables: dict, config: ml_collections.ConfigDict) -> dict:
  """Replaces the backbone's variables by torchvision ImageNet weights.

  norm 'frozen_bn' takes the BatchNorm statistics and affine as they are; norm 'bn' puts the
  affine into params (scale, bias) and the statistics into batch_stats (mean, var), through
  `frozen_bn_to_batch_norm`; 'gn' has no ImageNet weights.

  Args:
    variables: the model's freshly initialised variables.
    config: the full config (model.pretrained, model.backbone, model.norm,
      model.width_multiplier).

  Returns:
    variables with variables[collection]['backbone'] replaced.
  """
  m = config.model
  path = check_pretrained_file(config)
  if m.norm not in ("frozen_bn", "bn"):
    raise errors.ConfigError(
      f"config.model.pretrained is set but config.model.norm = {m.norm!r}: ImageNet ResNet "
      "weights exist for frozen_bn and bn only; set config.model.norm or pretrained=''."
    )
  loaded = load_torchvision_resnet(path, resnet_depth(m.backbone), m.width_multiplier, m.norm)
  merged = {k: dict(v) for k, v in variables.items()}
  for collection, tree in loaded.items():
    expected = jax.tree.map(jnp.shape, merged[collection]["backbone"])
    got = jax.tree.map(jnp.shape, tree)
    if expected != got:
      raise errors.ConfigError(
        f"config.model.pretrained = {m.pretrained!r} does not fit the {m.backbone} backbone's "
        f"'{collection}' variables (check config.model.backbone and width_multiplier)."
      )
    merged[collection]["backbone"] = tree
  return merged
