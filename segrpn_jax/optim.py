"""Learning-rate schedule and optimizer of the paper's recipe (docs/architecture.md).

SGD with momentum 0.9 and weight decay 1e-4, a linear warm-up from 0.0003 to 0.001 over the
first 500 steps, then the rate divided by 10 at 60k and 80k steps. Parameters of frozen
backbone stages (config.model.freeze_at) get no update at all: not the gradient, not the
weight decay, not the momentum. Normalisation parameters (GroupNorm / BatchNorm / LayerNorm
scale and bias) get no weight decay, as in detectron2 (WEIGHT_DECAY_NORM = 0).
"""

from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import optax

Path = tuple[str, ...]


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up joined to a piecewise-constant decay.

  Args:
    config: the `train` group of the config (base_lr, warmup_start_lr, warmup_steps,
      decay_steps, decay_factor).

  Returns:
    step -> learning rate. At step 0 it is warmup_start_lr, at warmup_steps base_lr, and after
    each of decay_steps (counted from step 0, not from the end of the warm-up) it is multiplied
    by decay_factor.
  """
  warmup = optax.linear_schedule(config.warmup_start_lr, config.base_lr, config.warmup_steps)
  # join_schedules hands the second schedule `step - warmup_steps`, so its boundaries shift.
  boundaries = {
    int(s) - config.warmup_steps: config.decay_factor for s in sorted(config.decay_steps)
  }
  decay = optax.piecewise_constant_schedule(config.base_lr, boundaries)
  return optax.join_schedules([warmup, decay], boundaries=[config.warmup_steps])


def _path_names(path) -> Path:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


# The parameters of flax's normalisation layers (GroupNorm, BatchNorm, LayerNorm, RMSNorm).
_NORM_LEAVES = frozenset({"scale", "bias"})


def _is_norm_module(module_params: Mapping) -> bool:
  """Whether a module's own parameter dict is a normalisation layer's.

  Decided by structure, not by the module's name (ResNet's shortcut norm is 'downsample_bn',
  the heads' are 'GroupNorm_0'): a normalisation layer holds only a per-channel scale and/or
  bias; every conv and dense layer holds a 'kernel'.
  """
  leaves = [v for v in module_params.values() if not isinstance(v, Mapping)]
  return (
    bool(leaves)
    and len(leaves) == len(module_params)
    and set(module_params) <= _NORM_LEAVES
    and all(len(getattr(v, "shape", ())) == 1 for v in leaves)
  )


def norm_modules(params) -> frozenset[Path]:
  """The paths of the normalisation layers in a parameter tree (see `_is_norm_module`).

  Args:
    params: the parameter tree (nested dicts of arrays or ShapeDtypeStructs).

  Returns:
    The set of module paths (tuples of names) whose parameters are kept out of weight decay.
  """
  found = set()

  def walk(node, path: Path):
    if _is_norm_module(node):
      found.add(path)
    for key, value in node.items():
      if isinstance(value, Mapping):
        walk(value, (*path, str(key)))

  walk(params, ())
  return frozenset(found)


def param_labels(params, is_frozen: Callable[[Path], bool]):
  """The optimizer label of every parameter: 'frozen', 'no_decay' (norms) or 'decay'.

  Args:
    params: the parameter tree.
    is_frozen: path of a parameter (tuple of names) -> True when it must never change.

  Returns:
    A tree of labels with the structure of `params`.
  """
  norms = norm_modules(params)

  def label(path, _):
    names = _path_names(path)
    if is_frozen(names):
      return "frozen"
    return "no_decay" if names[:-1] in norms else "decay"

  return jax.tree_util.tree_map_with_path(label, params)


def create_optimizer(
  config: ml_collections.ConfigDict,
  params,
  is_frozen: Callable[[Path], bool],
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD + momentum with coupled weight decay, frozen parameters masked out.

  Args:
    config: the `train` group of the config.
    params: the parameter tree (only its structure and paths are read).
    is_frozen: path of a parameter (tuple of names) -> True when it must never change.

  Returns:
    (optimizer, learning-rate schedule).
  """
  schedule = learning_rate_schedule(config)

  labels = param_labels(params, is_frozen)
  sgd = optax.sgd(schedule, momentum=config.momentum)
  tx = optax.multi_transform(
    {
      "decay": optax.chain(optax.add_decayed_weights(config.weight_decay), sgd),
      "no_decay": sgd,
      "frozen": optax.set_to_zero(),
    },
    labels,
  )
  return tx, schedule


def frozen_predicate(prefixes: Sequence[Path]) -> Callable[[Path], bool]:
  """A predicate that is True for every parameter path under one of `prefixes`."""
  prefixes = [tuple(p) for p in prefixes]
  return lambda path: any(path[: len(p)] == p for p in prefixes)
