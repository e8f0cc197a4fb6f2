"""Learning-rate schedule and optimizer of the paper's recipe (DESIGN.md section 1).

SGD with momentum 0.9 and weight decay 1e-4, a linear warm-up from 0.0003 to 0.001 over the
first 500 steps, then the rate divided by 10 at 60k and 80k steps. Parameters of frozen
backbone stages (config.model.freeze_at) get no update at all: not the gradient, not the
weight decay, not the momentum.
"""

from collections.abc import Callable, Sequence

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


def is_norm_param(path: Path) -> bool:
  """Normalisation scales and offsets, which detectron2 keeps out of weight decay."""
  return any(("norm" in p.lower() or p.lower().startswith(("bn", "gn"))) for p in path[:-1])


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

  def label(path, _):
    names = _path_names(path)
    if is_frozen(names):
      return "frozen"
    return "no_decay" if is_norm_param(names) else "decay"

  labels = jax.tree_util.tree_map_with_path(label, params)
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
