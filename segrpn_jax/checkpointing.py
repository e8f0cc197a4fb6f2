"""Orbax checkpoints of the train state: save every N steps and at the end, keep the last K,
restore the latest on start so a killed run continues where it stopped."""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A CheckpointManager in `workdir/checkpoints` with the train group's interval and keep-K.

  Args:
    workdir: the run's folder.
    config: the full config (reads train.checkpoint_every_steps and train.keep_checkpoints).

  Returns:
    The manager. `save(step, ...)` only writes on multiples of checkpoint_every_steps unless forced.
  """
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=config.train.checkpoint_every_steps,
    max_to_keep=config.train.keep_checkpoints,
    create=True,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  """Saves `state` at `step` when the interval says so (or `force`); returns whether it did."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores a state shaped and sharded like `abstract_state` (a tree of ShapeDtypeStructs).

  Args:
    manager: the run's manager.
    abstract_state: `jax.eval_shape` of the state, with `.sharding` set on each leaf.
    step: which step; None = the latest.

  Returns:
    (state, step), or (None, None) when the folder holds no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None, None
  if step not in manager.all_steps():
    raise FileNotFoundError(
      f"no checkpoint for step {step} in {manager.directory}; have {sorted(manager.all_steps())}."
    )
  state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  return state, step


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config next to its checkpoints (read back by `api.load`)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads the config written by `save_config`; names the file when it is missing."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a training run?")
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _tuples(tree):
  """JSON turns tuples into lists; the config's sequences are tuples (hashable, static)."""
  if isinstance(tree, dict):
    return {key: _tuples(value) for key, value in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(value) for value in tree)
  return tree
